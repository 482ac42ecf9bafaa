"""Forward-pass benchmark: avlens's hooked Qwen2.5-Omni thinker against Hugging Face's.

    python benchmarks/bench_forward.py [--seq 512 2048] [--reps 5] [--threads N] [--memory] [--profile]

Defaults: --seq 512 2048, --reps 5, --threads os.cpu_count(). On a machine where other processes
compete for the cores, --threads 1 gives much steadier ratios (OpenMP threads spin at barriers).

Model: a Qwen2.5-Omni thinker with random float32 weights, text backbone d_model 512, 8 layers,
8 heads (8 KV heads, d_head 64), d_mlp 2048, vocab 32000, TMRoPE (rope_theta 1e6, mrope_section
[8, 12, 12]); tiny 2-layer audio and vision towers (unused by text-only input). Input: one
text-only sequence of random token ids, attention mask all ones.

Configurations, timed in one process, alternating (the order rotates every repetition), medians
of `--reps` repetitions after a warm-up, all under `torch.no_grad()`:

    hf_eager     HF thinker, attn_implementation="eager", use_cache=False
    hf_sdpa      HF thinker, attn_implementation="sdpa" (same weight tensors), use_cache=False
    avlens       HookedAVTransformer.from_hf(hf) forward, no hooks
    avl_resid    run_with_cache(batch, names_filter=lambda n: "resid" in n)
    avl_full     run_with_cache(batch)  (every hook: materialises scores and patterns)

Reported: the medians, the ratios avlens / hf_sdpa (target <= 1.05), avl_full / hf_eager
(target <= 1.3) and avl_resid / hf_sdpa, both as the ratio of medians and as the median of the
per-repetition ratios (each repetition runs every configuration back to back), and the cache
sizes in MB. Absolute times are only meaningful within one run (PERFORMANCE.md).

`--memory`: peak RSS increase of one forward per configuration at the largest `--seq`, each
figure the median over `--mem-reps` fresh subprocesses (resource.getrusage ru_maxrss after the
forward minus the resident set just before it); cold (the process's first forward) and warm
(after a 16-token forward). The children run before this process builds its models, because a
child inherits its parent's ru_maxrss across fork/exec.

`--profile`: torch.profiler op tables of one hf_sdpa, avlens, hf_eager and avl_full forward at
the smallest `--seq`.

Every timing row also shows the process's user and system CPU time and minor page faults per
call: on these VMs, first-touching fresh memory (the full cache) costs mostly system time.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

VOCAB = 32000
D_MODEL = 512
N_LAYERS = 8
N_HEADS = 8
N_KV_HEADS = 8
D_MLP = 2048
MROPE_SECTION = [8, 12, 12]  # sums to d_head / 2 = 32
N_SPECIAL = 11  # special ids live at the top of the vocabulary, [VOCAB - 11, VOCAB)
SPECIAL_BASE = VOCAB - N_SPECIAL

CONFIGS = ("hf_eager", "hf_sdpa", "avlens", "avl_resid", "avl_full")


# ----------------------------------------------------------------------------------- models
def thinker_config():
    from avlens.families.qwen2_5_omni import tiny_thinker_config

    return tiny_thinker_config(vocab_size=VOCAB, d_model=D_MODEL, n_layers=N_LAYERS, n_heads=N_HEADS,
                               n_kv_heads=N_KV_HEADS, d_mlp=D_MLP, mrope_section=list(MROPE_SECTION))


def build_hf(attn: str, seed: int = 0, share_from=None):
    """A float32 HF thinker in eval mode. With `share_from`, its parameters are the very tensors
    of that model (load_state_dict(assign=True)), so two attention implementations share weights."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(
        copy.deepcopy(thinker_config()), attn_implementation=attn, dtype=torch.float32
    )
    if share_from is not None:
        model.load_state_dict(share_from.state_dict(), assign=True)
    model.eval()
    impl = model.model.language_model.config._attn_implementation
    if impl != attn:
        raise RuntimeError(f"asked for attn_implementation={attn!r}, the language model uses {impl!r}")
    return model


def build_avlens(hf):
    from avlens import HookedAVTransformer

    return HookedAVTransformer.from_hf(hf)


def make_input(seq: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, SPECIAL_BASE, (1, seq), generator=g)
    return input_ids, torch.ones_like(input_ids)


# ----------------------------------------------------------------------------------- runners
def resid_filter(name: str) -> bool:
    return "resid" in name


def make_runners(hf_eager, hf_sdpa, model, input_ids, attention_mask, batch):
    def run_hf(hf):
        def f():
            hf.model.rope_deltas = None
            return hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return f

    return {
        "hf_eager": run_hf(hf_eager),
        "hf_sdpa": run_hf(hf_sdpa),
        "avlens": lambda: model(batch),
        "avl_resid": lambda: model.run_with_cache(batch, names_filter=resid_filter),
        "avl_full": lambda: model.run_with_cache(batch),
    }


def cache_mb(cache) -> float:
    return sum(v.numel() * v.element_size() for v in cache.values()) / 2**20


def timed(fn) -> tuple[float, float, float, int]:
    """Wall seconds, user and system CPU seconds, and minor page faults of one call (the output
    is freed afterwards, as a caller dropping the logits / cache would)."""
    gc.collect()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    del out
    return dt, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


# ----------------------------------------------------------------------------------- timing
def bench_seq(seq: int, reps: int, warmup: int, models, verbose: bool = True) -> dict:
    hf_eager, hf_sdpa, model = models
    input_ids, attention_mask = make_input(seq)
    t0 = time.perf_counter()
    batch = model.prepare(input_ids=input_ids, attention_mask=attention_mask)
    prepare_s = time.perf_counter() - t0
    runners = make_runners(hf_eager, hf_sdpa, model, input_ids, attention_mask, batch)

    with torch.no_grad():
        # sanity: the two sides compute the same thing
        ref = runners["hf_sdpa"]()
        ours = runners["avlens"]()
        max_diff = float((ref - ours).abs().max())
        ref_e = runners["hf_eager"]()
        max_diff_eager = float((ref_e - ours).abs().max())
        del ref, ours, ref_e
        _, c = runners["avl_resid"]()
        resid_mb, resid_n = cache_mb(c), len(c)
        del c
        _, c = runners["avl_full"]()
        full_mb, full_n = cache_mb(c), len(c)
        del c
        for _ in range(warmup):
            for name in CONFIGS:
                timed(runners[name])

        times = {n: [] for n in CONFIGS}
        usage = {n: [] for n in CONFIGS}
        load0 = os.getloadavg()[0]
        for r in range(reps):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[: r % len(CONFIGS)]
            for name in order:
                wall, user, sys_, flt = timed(runners[name])
                times[name].append(wall)
                usage[name].append((user, sys_, flt))
            if verbose:
                print(f"  rep {r + 1}/{reps}: " + "  ".join(f"{n} {times[n][-1] * 1e3:.0f}ms" for n in CONFIGS), flush=True)
        load1 = os.getloadavg()[0]
    return dict(
        seq=seq, times=times, usage=usage, load=(load0, load1), prepare_s=prepare_s, max_abs_diff_logits_sdpa=max_diff, max_abs_diff_logits_eager=max_diff_eager,
        resid_cache_mb=resid_mb, resid_cache_n=resid_n, full_cache_mb=full_mb, full_cache_n=full_n,
    )


RATIOS = (
    ("avlens / hf_sdpa", "avlens", "hf_sdpa", 1.05),
    ("avl_full / hf_eager", "avl_full", "hf_eager", 1.3),
    ("avl_resid / hf_sdpa", "avl_resid", "hf_sdpa", None),
    ("hf_eager / hf_sdpa", "hf_eager", "hf_sdpa", None),
    ("avl_full / hf_sdpa", "avl_full", "hf_sdpa", None),
)


def report(res: dict) -> None:
    t = res["times"]
    med = {n: statistics.median(v) for n, v in t.items()}
    print(f"\nseq {res['seq']}  (batch 1, float32, threads {torch.get_num_threads()}, reps {len(t['avlens'])})")
    print(f"  logits max |avlens - hf_sdpa| = {res['max_abs_diff_logits_sdpa']:.2e}, |avlens - hf_eager| = {res['max_abs_diff_logits_eager']:.2e}")
    print(f"  model.prepare (once, not timed below): {res['prepare_s'] * 1e3:.1f} ms")
    load0, load1 = res["load"]
    busy = "  <- other processes compete for the cores: expect noise" if max(load0, load1) > torch.get_num_threads() + 0.5 else ""
    print(f"  1-min load average during the timed reps: {load0:.2f} -> {load1:.2f} (cores {os.cpu_count()}){busy}")
    print(f"  {'config':<12}{'median ms':>11}{'min ms':>10}{'max ms':>10}{'user s':>9}{'sys s':>8}{'minor faults':>14}")
    u = res["usage"]
    for n in CONFIGS:
        mu = [statistics.median(x[i] for x in u[n]) for i in range(3)]
        print(f"  {n:<12}{med[n] * 1e3:>11.1f}{min(t[n]) * 1e3:>10.1f}{max(t[n]) * 1e3:>10.1f}"
              f"{mu[0]:>9.2f}{mu[1]:>8.2f}{mu[2]:>9.0f} ({mu[2] * 4 / 1024:.0f} MB)")
    print("  (user/sys: median CPU seconds of the process per call, all threads; minor faults: pages first touched.\n"
          "   The target verdict uses the ratio of medians of wall time; 'CPU time' = ratio of median user+sys,\n"
          "   steadier than wall time when other processes compete, with --threads 1)")
    print(f"  {'ratio':<22}{'of medians':>11}{'median of per-rep':>19}{'of mins':>9}{'CPU time':>10}{'target':>9}")
    for label, a, b, target in RATIOS:
        r_med = med[a] / med[b]
        r_pair = statistics.median(x / y for x, y in zip(t[a], t[b]))
        r_min = min(t[a]) / min(t[b])
        tgt = "" if target is None else f"<= {target}"
        cpu = lambda n: statistics.median(x[0] + x[1] for x in u[n])
        r_cpu = cpu(a) / cpu(b)
        flag = "" if target is None else ("  ok" if r_med <= target else "  MISS")
        print(f"  {label:<22}{r_med:>11.3f}{r_pair:>19.3f}{r_min:>9.3f}{r_cpu:>10.3f}{tgt:>9}{flag}")
    print(f"  cache: resid {res['resid_cache_n']} tensors {res['resid_cache_mb']:.1f} MB; "
          f"full {res['full_cache_n']} tensors {res['full_cache_mb']:.1f} MB")


# ----------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def mem_child(config: str, seq: int, warm: bool) -> None:
    """Run in a fresh process: build only what `config` needs, then one forward at `seq`, and
    print ru_maxrss after it and the RSS before it. With `warm`, a 16-token forward runs first, so
    that one-time costs (library code and thread-pool pages touched on first use) are excluded
    without leaving large freed blocks in the heap."""
    hf = build_hf("eager" if config == "hf_eager" else "sdpa")
    model = build_avlens(hf) if config.startswith("avl") else None

    def runner(n):
        input_ids, attention_mask = make_input(n)
        batch = model.prepare(input_ids=input_ids, attention_mask=attention_mask) if model is not None else None
        return make_runners(hf, hf, model, input_ids, attention_mask, batch)[config]

    with torch.no_grad():
        if warm:
            out = runner(16)()
            del out
        run = runner(seq)
        gc.collect()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_before = _status_kb("VmRSS")
        out = run()
        peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(config=config, seq=seq, warm=warm, rss_before_kb=rss_before, peak_before_kb=peak_before, peak_after_kb=peak_after)))


def bench_memory(seq: int, threads: int, reps: int = 3) -> None:
    print(f"\npeak RSS increase of one forward at seq {seq} (threads {threads}), a fresh subprocess per figure:")
    print("  ru_maxrss after the forward - RSS before it (the output is still held). cold: the process's first")
    print("  forward; warm: after a 16-token forward (first-use costs excluded)")
    print(f"  (median of {reps} processes each; single figures vary by about +-40 MB from run to run)")
    print(f"  {'config':<12}{'resident MB':>12}{'cold incr MB':>14}{'warm incr MB':>14}")
    rows = {}
    for config in CONFIGS:
        got = {}
        for warm in [w for w in (False, True) for _ in range(reps)]:
            cmd = [sys.executable, os.path.abspath(__file__), "--_mem-child", config, "--seq", str(seq), "--threads", str(threads)]
            if warm:
                cmd.append("--_mem-warm")
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"  {config:<12} failed: {out.stderr.strip().splitlines()[-1:]}")
                break
            d = json.loads(out.stdout.strip().splitlines()[-1])
            if d["peak_after_kb"] <= d["peak_before_kb"]:
                print(f"  {config}: the forward did not raise the process peak; the figure is a lower bound")
            got.setdefault(warm, []).append(((d["peak_after_kb"] - d["rss_before_kb"]) / 1024, d["rss_before_kb"] / 1024))
        if len(got) == 2:
            cold = statistics.median(x[0] for x in got[False])
            warm_ = statistics.median(x[0] for x in got[True])
            resident = statistics.median(x[1] for x in got[False])
            rows[config] = (cold, warm_)
            print(f"  {config:<12}{resident:>12.0f}{cold:>14.0f}{warm_:>14.0f}")
    if "avlens" in rows and "hf_sdpa" in rows:
        (c_a, w_a), (c_h, w_h) = rows["avlens"], rows["hf_sdpa"]
        print(f"  avlens / hf_sdpa peak increase: cold {c_a / c_h:.2f}, warm {w_a / w_h:.2f}")


# ----------------------------------------------------------------------------------- profile
def profile(seq: int, models, rows: int = 25) -> None:
    from torch.profiler import ProfilerActivity, profile as tprofile

    hf_eager, hf_sdpa, model = models
    input_ids, attention_mask = make_input(seq)
    batch = model.prepare(input_ids=input_ids, attention_mask=attention_mask)
    runners = make_runners(hf_eager, hf_sdpa, model, input_ids, attention_mask, batch)
    with torch.no_grad():
        for name in ("hf_sdpa", "avlens", "hf_eager", "avl_full"):
            runners[name]()
            with tprofile(activities=[ProfilerActivity.CPU]) as prof:
                runners[name]()
            print(f"\n===== torch.profiler: {name}, seq {seq} =====")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# ----------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds (each runs every configuration once)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: os.cpu_count())")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS per configuration at the largest --seq")
    p.add_argument("--mem-reps", type=int, default=3, help="fresh processes per memory figure (median)")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables at the smallest --seq")
    p.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_mem-warm", dest="mem_warm", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if args.mem_child:
        mem_child(args.mem_child, args.seq[0], args.mem_warm)
        return

    from importlib.metadata import version

    print(f"torch {torch.__version__}, transformers {version('transformers')}, transformer_lens "
          f"{version('transformer-lens')}, python {platform.python_version()}, {platform.machine()}")
    print(f"torch.get_num_threads() = {torch.get_num_threads()} (os.cpu_count() = {os.cpu_count()}); "
          f"seq {args.seq}; reps {args.reps} after {args.warmup} warm-up round(s)")
    print(f"model: d_model {D_MODEL}, layers {N_LAYERS}, heads {N_HEADS} (kv {N_KV_HEADS}), d_mlp {D_MLP}, "
          f"vocab {VOCAB}, mrope_section {MROPE_SECTION}, float32, random weights")
    print("command: python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])))
    env = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_", "MKL_", "LD_PRELOAD", "THP_"))}
    if env:
        print(f"environment: {env}")

    if args.memory:
        # first, while this process is still small: a child inherits its parent's ru_maxrss
        bench_memory(max(args.seq), threads, args.mem_reps)

    hf_eager = build_hf("eager")
    hf_sdpa = build_hf("sdpa", share_from=hf_eager)
    assert hf_sdpa.lm_head.weight.data_ptr() == hf_eager.lm_head.weight.data_ptr(), "weights are not shared"
    model = build_avlens(hf_eager)
    models = (hf_eager, hf_sdpa, model)
    print(f"avlens: {model!r}")

    results = []
    for seq in args.seq:
        print(f"\n--- seq {seq} ---", flush=True)
        res = bench_seq(seq, args.reps, args.warmup, models)
        results.append(res)
        report(res)
    if len(results) > 1:
        print("\n===== summary =====")
        for res in results:
            report(res)
    if args.profile:
        profile(min(args.seq), models)


if __name__ == "__main__":
    main()
