"""BatchLayout / TokenLayout against brute-force Python loops over the group masks."""

import pytest
import torch

from avlens import AVConfig, BatchLayout, GroupPositions, TokenLayout
from avlens.layout import PARTITION_GROUPS


def _random_layout(seed=0, batch=3, n=20):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (batch, n), generator=g)  # no pad
    if batch > 1:
        labels[1, :4] = 5  # left padding in sample 1
    masks = {name: labels == i for i, name in enumerate(PARTITION_GROUPS)}
    return BatchLayout(masks), labels


def test_positions_match_brute_force_per_sample_and_padded():
    lay, labels = _random_layout()
    for gi, group in enumerate(PARTITION_GROUPS):
        padded = lay.positions(group)
        assert isinstance(padded, GroupPositions)
        for b in range(labels.shape[0]):
            expected = [p for p in range(labels.shape[1]) if labels[b, p] == gi]
            assert lay.positions(group, sample=b).tolist() == expected
            assert padded.index[b][padded.mask[b]].tolist() == expected
            assert lay[b].positions(group).tolist() == expected


def test_single_sample_layout_gives_a_long_tensor():
    lay, _ = _random_layout(batch=1)
    pos = lay.positions("audio")
    assert isinstance(pos, torch.Tensor) and pos.dtype == torch.long and pos.ndim == 1
    assert isinstance(lay[0], TokenLayout)


def test_partition_is_enforced():
    m = torch.zeros(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="partition"):
        BatchLayout({"text": m | True, "audio": m | True})


def test_last_overlay_is_last_real_position():
    lay, labels = _random_layout()
    for b in range(labels.shape[0]):
        real = [p for p in range(labels.shape[1]) if labels[b, p] != 5]
        assert lay.positions("last", sample=b).tolist() == [real[-1]]


def test_with_group_adds_overlay_and_rejects_partition_names():
    lay, _ = _random_layout()
    q = lay.with_group("question", [2, 5, -1])
    for b in range(3):
        assert q.positions("question", sample=b).tolist() == [2, 5, 19]
    per = lay.with_group("answer", [[1], [2, 3], [4]])
    assert per.counts("answer").tolist() == [1, 2, 1]
    with pytest.raises(ValueError, match="partition group"):
        lay.with_group("audio", [1])
    with pytest.raises(IndexError):
        lay.with_group("q", [99])


def test_unknown_group_suggests_closest():
    lay, _ = _random_layout()
    with pytest.raises(KeyError, match="audio"):
        lay.mask("audoi")


def test_uniform_positions_errors_name_counts_and_empty_groups():
    lay, labels = _random_layout()
    counts = [(labels[b] == 0).sum().item() for b in range(3)]
    if len(set(counts)) > 1:
        with pytest.raises(ValueError, match="different sizes"):
            lay.uniform_positions("audio")
    with pytest.raises(ValueError, match="empty"):
        lay.uniform_positions("sink")


def test_extend_and_slice_for_generation():
    lay, _ = _random_layout()
    ext = lay.extend(2)
    assert ext.n_pos == 22
    assert ext.mask("generated")[:, -2:].all() and ext.mask("text")[:, -2:].all()
    assert ext.positions("last", sample=0).tolist() == [21]
    step = ext.slice(21)
    assert step.n_pos == 1 and step.mask("generated").all()


def test_repr_and_html_show_groups():
    lay, _ = _random_layout()
    r = repr(lay)
    assert "BatchLayout(batch=3, pos=20)" in r and "audio=" in r
    h = lay._repr_html_()
    assert "<span" in h and "audio" in h


def test_avconfig_checks_mrope_section():
    with pytest.raises(ValueError, match="sum"):
        AVConfig(d_model=64, d_head=16, n_heads=4, rope_kind="mrope", mrope_section=[4, 4, 4])
    cfg = AVConfig(d_model=64, d_head=16, n_heads=4, rope_kind="mrope", mrope_section=[2, 3, 3])
    assert cfg.n_key_value_heads == 4 and cfg.d_mlp == 256
