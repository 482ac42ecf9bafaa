"""Memory of the streaming modality dominance score (issue: cross-modal hub analysis).

    python benchmarks/bench_analysis.py [--seq 2048] [--reps 3] [--threads 2]

On the benchmark model of `bench_forward.py` (Qwen2.5-Omni thinker, text d_model 512, 8 layers,
8 heads, vocab 32000, random weights) with an audio-in-video prompt of `--seq` tokens (random
log-mel features and frames through its audio and vision towers, so there are audio and video
positions; text fills the rest), each figure is the peak RSS increase of one call over the loaded
model and prepared batch, measured in a fresh subprocess (the kernel's resident high-water mark,
reset through /proc/self/clear_refs just before the call, minus the RSS before it; ru_maxrss where
the reset is not allowed), median over `--reps` processes:

* `forward`: `model(batch)` (logits at every position);
* `forward_nologits`: `model(batch, return_type=None)`;
* `mds`: `modality_dominance(model, batch, sinks)` (streaming per-key sums, no pattern kept);
* `mds_cached`: the same score from `run_with_cache` of every layer's `hook_pattern` (what one
  would do without avlens's streaming statistics).

Target: mds <= 1.3 x forward's increase.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_forward import _status_kb, build_avlens, build_hf  # noqa: E402

CONFIGS = ("forward", "forward_nologits", "mds", "mds_cached")


def media_batch(model, seq: int, seed: int = 1):
    """An audio-in-video prompt of exactly `seq` tokens: 16 s of audio (400 tokens) and 16 s of video
    at 2 fps with a 16 x 16 patch grid (1024 tokens), text before and after."""
    from avlens.families.qwen2_5_omni import media_placeholder_ids

    g = torch.Generator().manual_seed(seed)
    ids = model.cfg.token_ids
    seconds, frames = 16, 1600
    grid = (seconds, 16, 16)  # one temporal grid per second (2 frames at 2 fps)
    media = media_placeholder_ids(ids, n_audio_frames=frames, video_grid_thw=grid, video_second_per_grid=1.0, use_audio_in_video=True)
    n_text = seq - len(media)
    if n_text < 2:
        raise SystemExit(f"--seq must be at least {len(media) + 2} for this clip")
    text_hi = min(ids.values())
    before = torch.randint(0, text_hi, (n_text // 2,), generator=g).tolist()
    after = torch.randint(0, text_hi, (n_text - n_text // 2,), generator=g).tolist()
    input_ids = torch.tensor([before + media + after])
    vcfg = model.hf_config.vision_config if hasattr(model, "hf_config") else None
    patch_dim = 3 * 2 * 14 * 14 if vcfg is None else vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size**2
    return model.prepare(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
        input_features=torch.randn(1, 128, frames, generator=g), feature_attention_mask=torch.ones(1, frames, dtype=torch.long),
        pixel_values_videos=torch.randn(grid[0] * grid[1] * grid[2], patch_dim, generator=g),
        video_grid_thw=torch.tensor([grid]), video_second_per_grid=torch.tensor([1.0]), use_audio_in_video=True,
    )


def sinks_of(batch, n: int = 32) -> list[int]:
    """A fixed set of media positions to score (every k-th audio and video position)."""
    pos = sorted(batch.layout.positions("audio", 0).tolist()[::40] + batch.layout.positions("video", 0).tolist()[::64])
    return pos[:n]


def mds_from_cache(model, batch, sinks):
    """The brute-force way: cache every layer's full pattern, then the MDS."""
    cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"), return_type=None)[1]
    lay = batch.layout
    idx = torch.tensor(sinks)
    out = []
    for l in range(model.cfg.n_layers):
        A = cache[f"blocks.{l}.attn.hook_pattern"][0]  # [h, q, k]
        p = A.shape[-1]
        later = torch.arange(p)[:, None] > idx[None, :]  # [q, s]
        side = []
        for g in ("video", "audio"):
            qm = lay.mask(g)[0][:, None] & later
            side.append((A[:, :, idx] * qm).sum(1).mean(0) / qm.sum(0).clamp(min=1))
        v, a = side
        out.append((v - a) / (v + a + 1e-9))
    return torch.stack(out)


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS; False where the
    kernel does not allow it (then ru_maxrss, a lifetime peak, is used and the figure may be a
    leftover of an earlier, larger allocation)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(config: str, seq: int) -> None:
    from avlens.analysis import modality_dominance

    model = build_avlens(build_hf("sdpa"))
    with torch.no_grad():
        warm = media_batch(model, 1500)  # first-use costs (thread pools, library pages) excluded
        model(warm, return_type=None)  # no logits: the warm-up must not set a high peak of its own
        del warm
        batch = media_batch(model, seq)
        sinks = sinks_of(batch)
        run = {
            "forward": lambda: model(batch),
            "forward_nologits": lambda: model(batch, return_type=None),
            "mds": lambda: modality_dominance(model, batch, sinks),
            "mds_cached": lambda: mds_from_cache(model, batch, sinks),
        }[config]
        gc.collect()
        reset = _reset_peak()
        rss_before = _status_kb("VmRSS")
        hwm_before = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = run()
        hwm_after = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        check = None
        if config == "mds":
            check = float((out - mds_from_cache(model, batch, sinks)).abs().max())
    print(json.dumps(dict(config=config, rss_before_kb=rss_before, peak_before_kb=hwm_before, peak_after_kb=hwm_after,
                          hwm_reset=reset, max_abs_diff_vs_cached=check)))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--_child", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a._child:
        child(a._child, a.seq)
        return 0
    print(f"peak RSS increase of one call at seq {a.seq} (median of {a.reps} fresh processes each)")
    res = {}
    for config in CONFIGS:
        vals, diff = [], None
        for _ in range(a.reps):
            cmd = [sys.executable, os.path.abspath(__file__), "--_child", config, "--seq", str(a.seq), "--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"  {config} failed: {out.stderr.strip().splitlines()[-3:]}")
                break
            d = json.loads(out.stdout.strip().splitlines()[-1])
            if d["peak_after_kb"] <= d["peak_before_kb"]:
                print(f"  {config}: the call did not raise the measured peak (reset={d['hwm_reset']}); the figure is a lower bound")
            vals.append((d["peak_after_kb"] - d["rss_before_kb"]) / 1024)
            diff = d["max_abs_diff_vs_cached"] if d["max_abs_diff_vs_cached"] is not None else diff
        if vals:
            res[config] = statistics.median(vals)
            extra = f"   (max |MDS - cached-pattern MDS| = {diff:.2e})" if diff is not None else ""
            print(f"  {config:<18}{res[config]:>8.0f} MB{extra}")
    if "mds" in res and "forward" in res:
        print(f"  mds / forward: {res['mds'] / res['forward']:.2f} (target <= 1.3); "
              f"mds / forward_nologits: {res['mds'] / res['forward_nologits']:.2f}; "
              f"mds_cached / forward: {res['mds_cached'] / res['forward']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
