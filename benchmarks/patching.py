"""Patching benchmark: avlens's exact resid_pre layer x position sweep against TransformerLens 4.3's
`get_act_patch_resid_pre`, both on the same avlens model.

    python benchmarks/patching.py [--reps 5] [--threads 1] [--tl-sample 120] [--tl-full] [--memory]

Model: the forward benchmark's (`bench_forward.py`): a Qwen2.5-Omni thinker with random float32
weights, text backbone d_model 512, 8 layers, 8 heads, d_mlp 2048, vocab 32000. Input: one text
sequence of 256 random tokens; the corrupted input replaces positions 100-109 with other random
tokens. Metric (both sides, the same function): `logits[:, -1, 11] - logits[:, -1, 42]`;
avlens is told it reads only the last position (`logits_at="last"`).

What runs, alternating in one process (`--reps` rounds after a warm-up, medians reported):

    tl       TransformerLens's per-patch forward: `generic_activation_patch` (what
             `get_act_patch_resid_pre` calls) with a one-row `index_df`, on a seeded random sample
             of the 2,048 cells (`--tl-sample`, split across the rounds); its full-sweep time is
             extrapolated as 2,048 x the mean per-patch time of the round's sample
    avlens   `avlens.patching.activation_patch(model, clean, corrupted, metric, logits_at="last")`,
             the full 8 x 256 sweep

Reported: the speed-up (TL's extrapolated sweep / avlens's sweep, as the median of the per-round
ratios, in wall time and in process CPU time), the spread of TL's per-patch times, the max abs
difference between the two on every sampled cell (`--tl-full`: run TL's whole sweep once and
compare the whole grid), the FLOP bound of an exact sweep on this input (layer stack alone, and
with the unembedding), the work avlens actually did against that bound, the share of cells
skipped as no-ops, the layer x group sweep time (groups: text = all, before = 0-99,
span = 100-109, after = 110-255, last), and (`--memory`) the peak RSS increase of an avlens sweep
and of one TL per-patch forward, each in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # TL's sweep draws a progress bar per call (read at import)

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_forward import D_MLP, D_MODEL, N_HEADS, N_KV_HEADS, N_LAYERS, SPECIAL_BASE, VOCAB, _status_kb, build_avlens, build_hf  # noqa: E402

SEQ = 256
SPAN = (100, 110)
T1, T2 = 11, 42


def metric(logits):
    return (logits[:, -1, T1] - logits[:, -1, T2]).sum()


def setup():
    """The model, the clean and corrupted batches."""
    model = build_avlens(build_hf("sdpa"))
    g = torch.Generator().manual_seed(1)
    clean_ids = torch.randint(0, SPECIAL_BASE, (1, SEQ), generator=g)
    corrupted_ids = clean_ids.clone()
    g2 = torch.Generator().manual_seed(2)
    while True:
        repl = torch.randint(0, SPECIAL_BASE, (SPAN[1] - SPAN[0],), generator=g2)
        if bool((repl != clean_ids[0, SPAN[0]:SPAN[1]]).all()):
            break
    corrupted_ids[0, SPAN[0]:SPAN[1]] = repl
    mask = torch.ones_like(clean_ids)
    clean = model.prepare(input_ids=clean_ids, attention_mask=mask)
    corrupted = model.prepare(input_ids=corrupted_ids, attention_mask=mask)
    return model, clean, corrupted


def avlens_sweep(model, clean, corrupted, **kw):
    from avlens import patching

    return patching.activation_patch(model, clean, corrupted, metric, logits_at="last", progress=False, **kw)


def tl_patches(model, corrupted, clean_cache, cells):
    """TransformerLens's own per-patch code path, one cell per call; (values, seconds each)."""
    import pandas as pd
    from transformer_lens import patching as tl

    vals, secs = [], []
    for l, p in cells:
        df = pd.DataFrame([(l, p)], columns=["layer", "pos"])
        t0 = time.perf_counter()
        v = tl.generic_activation_patch(model, corrupted, clean_cache, metric, patch_setter=tl.layer_pos_patch_setter,
                                        activation_name="resid_pre", index_df=df)
        secs.append(time.perf_counter() - t0)
        vals.append(float(v[0]))
    return vals, secs


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------------------- FLOPs
def flops_model(cfg):
    """FLOPs of one token through one layer (attending `n_keys` keys), and of one unembedded
    position. Projections, attention (scores and weighted sum) and the SwiGLU MLP; norms and
    rotary are negligible."""
    d, h, g, e, m, V = cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab_out
    proj = 2 * d * (2 * h * e + 2 * g * e)
    mlp = 2 * 3 * d * m

    def layer(n_keys: int) -> float:
        return proj + mlp + 4 * h * e * n_keys

    return layer, 2 * d * V


def flop_bound(cfg, plans):
    """The serial sweep's FLOPs and an exact sweep's minimum: a patch at (l, p) recomputes layers
    l.. at positions p.. and unembeds one position; a no-op (plan None) costs nothing."""
    layer, unembed = flops_model(cfg)
    L, S = cfg.n_layers, SEQ
    col = [layer(p + 1) for p in range(S)]  # one position through one layer
    suffix = [0.0] * (S + 1)
    for p in range(S - 1, -1, -1):
        suffix[p] = suffix[p + 1] + col[p]
    stack = L * suffix[0]
    serial_layers = len(plans) * stack
    serial_total = len(plans) * (stack + S * unembed)
    exact_layers = sum((L - pl[0]) * suffix[pl[1]] for pl in plans if pl is not None)
    exact_total = exact_layers + sum(unembed for pl in plans if pl is not None)
    return serial_layers / exact_layers, serial_total / exact_total, exact_layers, suffix


def done_work(model, clean, corrupted):
    """The layer work avlens's sweep actually does (its forwards recompute a chunk's positions from
    its earliest patch): recorded by wrapping the engine's chunk runner once."""
    import avlens.interventions.engine as engine

    calls = []
    original = engine._run_chunk

    def record(model_, base, ids, start, p0, *a, **k):
        calls.append((len(ids), start, p0))
        return original(model_, base, ids, start, p0, *a, **k)

    engine._run_chunk = record
    try:
        avlens_sweep(model, clean, corrupted)
    finally:
        engine._run_chunk = original
    return calls


# ----------------------------------------------------------------------------------- memory
def mem_child(what: str) -> None:
    model, clean, corrupted = setup()
    with torch.no_grad():
        _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
        model(corrupted)  # first-use costs (thread pools, library pages) out of the figure
    rss_before = _status_kb("VmRSS")
    if what == "avlens":
        avlens_sweep(model, clean, corrupted)
    else:
        tl_patches(model, corrupted, cache, [(3, 150)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(what=what, rss_before_kb=rss_before, peak_kb=peak)))


def bench_memory(threads: int, reps: int) -> dict:
    out = {}
    for what in ("avlens", "tl"):
        incs = []
        for _ in range(reps):
            cmd = [sys.executable, os.path.abspath(__file__), "--_mem-child", what, "--threads", str(threads)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ, TQDM_DISABLE="1"))
            if r.returncode != 0:
                raise RuntimeError(f"memory child {what} failed: {r.stderr[-2000:]}")
            d = json.loads(r.stdout.strip().splitlines()[-1])
            incs.append((d["peak_kb"] - d["rss_before_kb"]) / 1024)
        out[what] = statistics.median(incs)
    return out


# ----------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tl-sample", type=int, default=120, help="TL per-patch forwards timed in all (>= 100)")
    p.add_argument("--tl-full", action="store_true", help="also run TL's whole sweep once (minutes) and compare every cell")
    p.add_argument("--memory", action="store_true", help="peak RSS increase of an avlens sweep and of one TL forward")
    p.add_argument("--mem-reps", type=int, default=3)
    p.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.mem_child:
        mem_child(args.mem_child)
        return

    from importlib.metadata import version

    print(f"torch {torch.__version__}, transformers {version('transformers')}, transformer_lens {version('transformer-lens')}, "
          f"python {platform.python_version()}, {platform.machine()}")
    print(f"torch.get_num_threads() = {torch.get_num_threads()} (os.cpu_count() = {os.cpu_count()}); float32; reps {args.reps}")
    print(f"model: d_model {D_MODEL}, layers {N_LAYERS}, heads {N_HEADS} (kv {N_KV_HEADS}), d_mlp {D_MLP}, vocab {VOCAB}; "
          f"input: {SEQ} tokens, positions {SPAN[0]}-{SPAN[1] - 1} corrupted")
    print("command: python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])), flush=True)
    mem = bench_memory(args.threads, args.mem_reps) if args.memory else None  # before this process grows

    model, clean, corrupted = setup()
    L = model.cfg.n_layers
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
    cells = [(l, q) for l in range(L) for q in range(SEQ)]
    rng = random.Random(0)
    sample = rng.sample(cells, max(args.tl_sample, args.reps))
    groups = [sample[i::args.reps] for i in range(args.reps)]

    res = avlens_sweep(model, clean, corrupted)  # warm-up, and the values to compare
    tl_patches(model, corrupted, clean_cache, sample[:2])
    tl_rate, av_times, av_cpu, tl_cpu_rate, tl_all, tl_vals = [], [], [], [], [], {}
    load0 = os.getloadavg()[0]
    for r in range(args.reps):
        c0 = cpu_seconds()
        vals, secs = tl_patches(model, corrupted, clean_cache, groups[r])
        tl_cpu_rate.append((cpu_seconds() - c0) / len(secs))
        tl_rate.append(statistics.mean(secs))
        tl_all += secs
        tl_vals.update(zip(groups[r], vals))
        c0, t0 = cpu_seconds(), time.perf_counter()
        res = avlens_sweep(model, clean, corrupted)
        av_times.append(time.perf_counter() - t0)
        av_cpu.append(cpu_seconds() - c0)
        print(f"  round {r + 1}/{args.reps}: TL {tl_rate[-1] * 1e3:.0f} ms/patch (x {len(cells)} = {tl_rate[-1] * len(cells):.0f} s), "
              f"avlens sweep {av_times[-1]:.1f} s, ratio {tl_rate[-1] * len(cells) / av_times[-1]:.1f}", flush=True)
    load1 = os.getloadavg()[0]
    diff = max(abs(v - float(res.values[l, q])) for (l, q), v in tl_vals.items())

    speedup = statistics.median(t * len(cells) / a for t, a in zip(tl_rate, av_times))
    speedup_cpu = statistics.median(t * len(cells) / a for t, a in zip(tl_cpu_rate, av_cpu))
    plans = _plans(model, clean, corrupted)
    bound_layers, bound_total, exact_layers, suffix = flop_bound(model.cfg, plans)
    calls = done_work(model, clean, corrupted)
    did = sum(n * (L - start) * suffix[p0] for n, start, p0 in calls)
    layer, unembed = flops_model(model.cfg)
    did_total = did + sum(n * unembed for n, _, _ in calls)
    serial_total = len(cells) * (L * suffix[0] + SEQ * unembed)

    groups_batch = clean.with_group("before", list(range(0, SPAN[0]))).with_group("span", list(range(*SPAN)))
    groups_batch = groups_batch.with_group("after", list(range(SPAN[1], SEQ)))
    corrupted_g = corrupted.with_layout(groups_batch.layout)
    g_names = ["text", "before", "span", "after", "last"]
    g_times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        by_group = avlens_sweep(model, groups_batch, corrupted_g, over=("layer", "group"), groups=g_names)
        g_times.append(time.perf_counter() - t0)

    print(f"\nresults (1-min load {load0:.2f} -> {load1:.2f} on {os.cpu_count()} cores)")
    print(f"  TL per-patch forward: median {statistics.median(tl_all) * 1e3:.0f} ms, min {min(tl_all) * 1e3:.0f}, "
          f"max {max(tl_all) * 1e3:.0f} (n = {len(tl_all)}); extrapolated full sweep {statistics.median(tl_rate) * len(cells):.0f} s")
    print(f"  avlens full sweep: median {statistics.median(av_times):.1f} s (min {min(av_times):.1f}, max {max(av_times):.1f}); "
          f"{res.stats.n_forwards} batched forwards")
    print(f"  speed-up avlens vs TL: {speedup:.1f}x wall, {speedup_cpu:.1f}x CPU time (target >= 10x)")
    print(f"  max |avlens - TL| over the {len(tl_vals)} sampled cells: {diff:.2e} (target <= 1e-4)")
    print(f"  FLOP bound of an exact sweep on this input: {bound_layers:.1f}x on the layer stack, {bound_total:.1f}x with the unembedding")
    print(f"  avlens's work: {did / exact_layers:.3f} x the minimum layer work; its FLOP ratio to the serial sweep "
          f"{serial_total / did_total:.1f}x; wall speed-up / FLOP bound = {speedup / bound_total:.2f}")
    print(f"  cells skipped as no-ops: {res.stats.n_skipped} / {res.stats.n_cells} ({100 * res.stats.n_skipped / res.stats.n_cells:.1f} %)")
    print(f"  layer x group sweep ({L} x {len(g_names)} = {by_group.values.numel()} cells): median {statistics.median(g_times):.2f} s")
    if mem is not None:
        print(f"  peak RSS increase (median of {args.mem_reps} fresh processes): avlens sweep {mem['avlens']:.0f} MB, "
              f"one TL per-patch forward {mem['tl']:.0f} MB")
    if args.tl_full:
        from transformer_lens import patching as tl

        t0 = time.perf_counter()
        full = tl.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
        t_full = time.perf_counter() - t0
        print(f"  TL full sweep: {t_full:.0f} s ({t_full / statistics.median(av_times):.1f}x avlens's median sweep); "
              f"max |avlens - TL| over all {full.numel()} cells: {float((full.float() - res.values).abs().max()):.2e}")


def _plans(model, clean, corrupted):
    """The sweep's plans (first layer and position each cell can change), as the engine sees them."""
    from avlens.interventions.engine import make_reading, run_base
    from avlens.interventions.grid import build_grid
    from avlens.interventions.patching import ReplacementSweep

    L = model.cfg.n_layers
    grid = build_grid(("layer", "position"), corrupted.layout, L, None)
    names = {l: f"blocks.{l}.hook_resid_pre" for l in range(L)}
    reading = make_reading({"m": metric}, corrupted, "last")
    base = run_base(model, corrupted, reading, list(names.values()))
    source = run_base(model, clean, reading, list(names.values()), state=False)
    sweep = ReplacementSweep(names, {l: source.acts[n] for l, n in names.items()}, {l: base.acts[n] for l, n in names.items()}, grid.cells)
    return sweep.plans()


if __name__ == "__main__":
    main()
