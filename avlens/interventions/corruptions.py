"""Corruptions: corrupted batches with the clean batch's token groups at the same positions.

- `zero_media(model, batch, "audio")`: the paper's corruption (METHODS.md sections 4-5): the raw
  signal (waveform / frames) is zeroed before feature extraction and the encoder re-run, so the
  model sees exactly what it would see for silent audio or black frames; positions stay aligned.
- `zero_features(model, batch, "video")`: the encoder's input features (log-mel / pixel
  patches) set to zero, then re-encoded.
- `zero_embeddings(model, batch, group)`: the merged input embeddings of a token group set to
  zero (for media, the projected encoder outputs).
- `gaussian_noise(model, batch, group, ...)`: ROME's corruption (Meng et al. 2022): Gaussian
  noise on a group's input embeddings, `sigma = 3 x` the standard deviation of that group's
  embeddings over a reference set (`embedding_std`), or a given sigma; `n_copies` noised copies
  per sample, seeded.
- `swap_media(batch, "audio", donor=... | permutation=...)`: another sample's media.
- Any user-built batch works too; `check_aligned(clean, corrupted)` says where two batches'
  groups differ.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from avlens.batch import MEDIA_KINDS, AVBatch

_RAW_KEYS = {"audio": "input_features", "video": "pixel_values_videos", "image": "pixel_values"}


def check_aligned(clean: AVBatch, corrupted: AVBatch) -> None:
    """Raise a clear error unless both batches have the same token groups at the same positions."""
    if tuple(clean.shape) != tuple(corrupted.shape):
        raise ValueError(
            f"the clean batch is {tuple(clean.shape)} [batch, pos] and the corrupted one {tuple(corrupted.shape)}; "
            "a patch moves a state between corresponding positions, so they must have the same shape. "
            "Build the corrupted batch from the clean one (avlens.patching.corruptions) or pad both alike."
        )
    diffs = clean.layout.differences(corrupted.layout)
    if diffs:
        raise ValueError(
            "the clean and corrupted batches must have the same token groups at the same positions "
            "(contents may differ), but they differ: " + "; ".join(diffs) + ". Corrupt the media "
            "content (zero_media, gaussian_noise, swap_media) rather than removing it, so positions stay aligned."
        )


def aligned_batches(model, clean, corrupted) -> tuple[AVBatch, AVBatch]:
    """Both inputs as `AVBatch`es, checked to be aligned. A corrupted batch holding k copies of
    each clean sample (copy-major, as `gaussian_noise` makes) is matched by tiling the clean one."""
    clean_b, corrupted_b = model._to_batch(clean), model._to_batch(corrupted)
    b, n = clean_b.batch_size, corrupted_b.batch_size
    if n != b and n % b == 0 and clean_b.shape[1] == corrupted_b.shape[1]:
        clean_b = clean_b.select(torch.arange(b).repeat(n // b).tolist())
    check_aligned(clean_b, corrupted_b)
    return clean_b, corrupted_b


def _check_modality(batch: AVBatch, modality: str) -> None:
    if modality not in MEDIA_KINDS:
        raise ValueError(f"modality must be one of {MEDIA_KINDS}; got {modality!r}")
    if int(batch.layout.counts(modality).sum()) == 0:
        raise ValueError(f"the batch has no {modality} tokens, so corrupting its {modality} would change nothing")


def _reencoded(model, batch: AVBatch, modality: str, fill: Tensor) -> AVBatch:
    """`batch` with the modality's encoder input replaced by `fill` (broadcast to its shape) and
    the media re-encoded (the family's `encode_media` / `make_batch`, so whatever else its encoders
    feed the decoder, such as Qwen3-Omni's DeepStack features, follows)."""
    _check_modality(batch, modality)
    key = _RAW_KEYS[modality]
    raw = batch.raw or {}
    if raw.get(key) is None or not hasattr(model, "encode_media"):
        raise ValueError(
            f"this batch carries no raw {modality} inputs ({key}) to re-encode: it was not built by "
            "model.prepare(...) / model.prepare_media(...), or it was sliced. Build it with one of "
            f"those, or use zero_embeddings(model, batch, {modality!r}) to zero the {modality} embeddings."
        )
    old = raw[key]
    new_raw = dict(raw)
    new_raw[key] = fill.to(old.device, old.dtype).expand_as(old).clone()
    with torch.no_grad():
        fresh = model.encode_media(new_raw)  # deterministic: the other modalities come out as before
    fields = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                  layout=batch.layout, features={**batch.features, **fresh}, rope_deltas=batch.rope_deltas,
                  inputs_embeds=batch.inputs_embeds, raw=new_raw)
    make = getattr(model, "make_batch", None)
    return make(**fields) if make is not None else AVBatch(**fields)


def _silence(model, modality: str, raw: Tensor) -> Tensor:
    """The encoder input that a zero raw signal becomes: the log-mel column of a silent waveform
    (Whisper's floor, -1.5), or the patch row of black frames ((0 - mean) / std per channel, with
    the model's own normalisation)."""
    from avlens.data import media

    if modality == "audio":
        feats, _ = media.audio_features(np.zeros(1600, dtype=np.float32), n_mels=raw.shape[1])
        return feats[0, :, :1]  # [n_mels, 1], every frame of silence is this column
    p = media._model_params(model)
    f = p["patch_size"] * p["merge_size"]
    zeros = np.zeros((p["temporal_patch_size"], f, f, 3), dtype=np.uint8)
    kw = dict(patch_size=p["patch_size"], temporal_patch_size=p["temporal_patch_size"], merge_size=p["merge_size"], do_resize=False)
    # the family's pixel normalisation where it has its own (Qwen3-Omni: mean = std = 0.5), else CLIP's
    vp = getattr(model, "vision_processing", None) or {}
    kw.update({k: vp[k] for k in ("image_mean", "image_std") if k in vp})
    rows = media.video_patches(zeros, **kw)[0] if modality == "video" else media.image_patches(zeros[0], **kw)[0]
    if rows.shape[1] != raw.shape[1]:
        raise ValueError(f"this model's {modality} patches have {raw.shape[1]} values, black frames gave {rows.shape[1]}")
    return rows[:1]


def zero_media(model, batch: AVBatch, modality: str) -> AVBatch:
    """The paper's corruption: `modality`'s raw signal set to zero before feature extraction
    (silent waveform / black frames), the encoder re-run; everything else, including every
    position, unchanged. Equal to `model.prepare_media(..., audio=np.zeros_like(wave))`."""
    _check_modality(batch, modality)
    raw = (batch.raw or {}).get(_RAW_KEYS[modality])
    return _reencoded(model, batch, modality, _silence(model, modality, raw) if raw is not None else torch.zeros(()))


def zero_features(model, batch: AVBatch, modality: str) -> AVBatch:
    """`modality`'s encoder input features (log-mel frames / pixel patches) set to zero and
    re-encoded."""
    return _reencoded(model, batch, modality, torch.zeros(()))


@torch.no_grad()
def _embeddings(model, batch: AVBatch) -> Tensor:
    return model.embed_batch(batch).detach().clone()


def zero_embeddings(model, batch: AVBatch, group: str) -> AVBatch:
    """The merged input embeddings of a token group (any group: audio, video, text, a user span)
    set to zero. The corrupted batch carries `inputs_embeds` (its raw media are dropped, so an
    encoder hook cannot silently re-encode them)."""
    mask = batch.layout.mask(group)
    if not bool(mask.any()):
        raise ValueError(f"token group {group!r} is empty in this batch, so zeroing it would change nothing")
    x = _embeddings(model, batch)
    x[mask.to(x.device)] = 0
    return replace(batch, inputs_embeds=x, features={}, raw={})


def embedding_std(model, batches: Union[AVBatch, Sequence[AVBatch]], group: str) -> float:
    """Standard deviation of the input embeddings at `group`'s positions over a reference set
    (ROME's `collect_embedding_std`, over one modality's media embeddings here)."""
    if isinstance(batches, AVBatch):
        batches = [batches]
    vals = []
    for b in batches:
        b = model._to_batch(b)
        m = b.layout.mask(group)
        if bool(m.any()):
            vals.append(_embeddings(model, b)[m.to(model.W_E.device)].flatten().float())
    if not vals:
        raise ValueError(f"the reference batches have no {group!r} positions to measure an embedding std on")
    return float(torch.cat(vals).std())


def gaussian_noise(
    model,
    batch: AVBatch,
    group: str,
    sigma: Optional[float] = None,
    reference: Union[AVBatch, Sequence[AVBatch], None] = None,
    factor: float = 3.0,
    n_copies: int = 10,
    seed: int = 0,
) -> AVBatch:
    """ROME's corruption: `n_copies` copies of every sample (copy-major: copy 0 of every
    sample, then copy 1, ...) with Gaussian noise of standard deviation `sigma` added to
    `group`'s input embeddings. `sigma` defaults to `factor` (3) x `embedding_std(model,
    reference, group)`. Seeded: the same seed gives the same noise."""
    mask = batch.layout.mask(group)
    if not bool(mask.any()):
        raise ValueError(f"token group {group!r} is empty in this batch, so noising it would change nothing")
    if sigma is None:
        if reference is None:
            raise ValueError(
                "give the noise scale: sigma=..., or reference= batches to measure the embedding std on "
                f"(ROME uses 3 x the std of the {group} embeddings over a reference set)"
            )
        sigma = factor * embedding_std(model, reference, group)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if n_copies < 1:
        raise ValueError(f"n_copies must be >= 1, got {n_copies}")
    b = batch.batch_size
    rows = torch.arange(b).repeat(n_copies)
    x = _embeddings(model, batch)[rows.to(model.W_E.device)]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.device, x.dtype) * sigma
    x = x + noise * mask[rows].to(x.device)[..., None]
    return replace(batch.select(rows.tolist()), inputs_embeds=x, features={}, raw={})


def swap_media(batch: AVBatch, modality: str, donor: Optional[AVBatch] = None, permutation: Optional[Sequence[int]] = None) -> AVBatch:
    """`batch` with another sample's `modality` features: sample i takes the media of `donor`'s
    sample i, or of this batch's sample `permutation[i]`. Token counts must match per sample
    (positions then stay aligned); the raw inputs are dropped (they no longer match)."""
    _check_modality(batch, modality)
    if type(batch) is not AVBatch:
        raise TypeError(
            f"swap_media swaps the spliced {modality} features only, but this family's batch "
            f"({type(batch).__name__}) carries more per-media inputs; build the swapped batch with "
            "model.prepare / model.prepare_media from the other sample's media instead."
        )
    if (donor is None) == (permutation is None):
        raise ValueError("pass exactly one of donor= (another batch) or permutation= (a sample order)")
    src = batch if donor is None else donor
    order = list(permutation) if permutation is not None else list(range(batch.batch_size))
    if len(order) != batch.batch_size or (donor is not None and donor.batch_size != batch.batch_size):
        raise ValueError(f"need one source sample per sample of the batch ({batch.batch_size})")
    counts = batch.layout.counts(modality).tolist()
    src_counts = src.layout.counts(modality).tolist()
    starts = np.concatenate([[0], np.cumsum(src_counts)]).astype(int)
    parts = []
    for i, j in enumerate(order):
        if src_counts[j] != counts[i]:
            raise ValueError(
                f"sample {i} has {counts[i]} {modality} tokens but its source sample {j} has {src_counts[j]}; "
                "swapped media must have the same token count so that positions stay aligned"
            )
        parts.append(src.features[modality][starts[j]:starts[j + 1]])
    return replace(batch, features={**batch.features, modality: torch.cat(parts, 0)}, raw={})
