"""Causal tracing in its two forms.

- `causal_trace` (ROME; Meng et al. 2022, *Locating and Editing Factual Associations in GPT*):
  noise a token group's input embeddings (3 x the embedding std of a reference set, or a given
  sigma; `n_copies` noised copies), then restore one clean state per (layer, position), or a
  window of layers around each layer, and read the metric, averaged over the noised copies.
  `result.values` is the restored metric, `result.base` the noised one (`result.effect()` is
  ROME's indirect effect), `result.source` the clean one (`total_effect = source - base`).
- `trace_token_sets` (the paper, METHODS.md section 5): corrupt one modality by zeroing its
  input, patch the clean states of each token set back (at every layer at once, the default, or
  in layer windows) and report IE_clean and IE_corrupt; `answer_steps=k` scores the answer
  probability maximised over k greedy steps (the official metric).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from avlens.batch import AVBatch
from avlens.interventions.corruptions import gaussian_noise
from avlens.interventions.grid import layer_windows
from avlens.interventions.metrics import Answers, ie_clean, ie_corrupt
from avlens.interventions.patching import activation_patch
from avlens.interventions.results import PatchResult


def causal_trace(
    model,
    batch: AVBatch,
    metric,
    noise_group: str,
    *,
    sigma: Optional[float] = None,
    reference: Union[AVBatch, Sequence[AVBatch], None] = None,
    factor: float = 3.0,
    n_copies: int = 10,
    seed: int = 0,
    site: str = "resid_post",
    window: int = 1,
    positions: Optional[Sequence[int]] = None,
    layers: Optional[Sequence[int]] = None,
    **sweep,
) -> PatchResult:
    """ROME's causal trace: `[layer, position]` of the metric with the clean state restored
    into the noised run (averaged over `n_copies` noised copies).

    `site` defaults to ROME's hidden state (the layer output, `resid_post`); ROME traces MLP and
    attention outputs with `site="mlp_out"` / `"attn_out"` and `window=10` (the restored layers
    are `[l - window // 2, l + window - window // 2)` clipped). `sweep` passes on to
    `activation_patch` (`batch_size`, `memory_budget`, `verify`, `progress`, `logits_at`).
    """
    corrupted = gaussian_noise(model, batch, noise_group, sigma=sigma, reference=reference, factor=factor, n_copies=n_copies, seed=seed)
    L = model.cfg.n_layers
    centres = list(range(L)) if layers is None else list(layers)
    res = activation_patch(model, batch, corrupted, metric, site=site, over=("window", "position"),
                           windows=layer_windows(L, window, centres), positions=positions, **sweep)
    b = batch.batch_size
    per = res.per_sample
    if per is not None:  # average the noised copies of each sample
        per = per.reshape(*per.shape[:-1], n_copies, b).mean(-2)
    base = res.base.reshape(n_copies, b).mean(0) if res.base.ndim == 1 else res.base
    source = res.source.reshape(n_copies, b)[0] if res.source.ndim == 1 else res.source
    coords = dict(res.coords)
    coords["layer"] = centres
    del coords["window"]
    return PatchResult(
        values=res.values, dims=("layer", "position"), coords=coords, per_sample=per, base=base, source=source,
        method="causal tracing (ROME)" + (f", window {window}" if window > 1 else ""), site=site, direction="restoring",
        metric=res.metric, position_groups=res.position_groups, layout=res.layout, stats=res.stats,
        extras={"noise_group": noise_group, "n_copies": n_copies, "sigma": sigma, "windows": layer_windows(L, window, centres)},
    )


def trace_token_sets(
    model,
    clean: AVBatch,
    corrupted: AVBatch,
    token_sets: dict,
    o_clean: Answers,
    o_corrupt: Optional[Answers] = None,
    *,
    site: str = "attn_in",
    windows: Union[int, Sequence[Sequence[int]], None] = None,
    layers: Optional[Sequence[int]] = None,
    answer_steps: int = 1,
    **sweep,
) -> dict[str, PatchResult]:
    """The paper's causal tracing of token sets: for each set S (a group name such as `"sink"`,
    positions, or a `[batch, pos]` mask), the corrupted run with S's clean states written back at
    `site` (default: the normalised attention input, which feeds q, k and v), at every layer at
    once (or `layers=`), or in each of `windows`. Returns `{"IE_clean": ..., "IE_corrupt": ...}`
    (IE_corrupt only with `o_corrupt`), each `[token_set]` or `[window, token_set]`, x 100.

    Answers are token ids or words (with `model.tokenizer`; the larger probability of the word's
    and " " + word's first sub-token counts). `answer_steps=k` patches at prefill, decodes k
    greedy steps and takes the answer probability maximised over them (the official
    `max_prob_for_word`); 1 is the prefill-only case.
    """
    metrics = {"IE_clean": ie_clean(o_clean, model)}
    if o_corrupt is not None:
        metrics["IE_corrupt"] = ie_corrupt(o_corrupt, model)
    over = ("token_set",) if windows is None else ("window", "token_set")
    results = activation_patch(model, clean, corrupted, metrics, site=site, over=over, token_sets=token_sets, windows=windows,
                               layers=layers, answer_steps=answer_steps, **sweep)
    for r in results.values():
        r.method = "token-set tracing"
    return results
