#!/usr/bin/python3
"""Where a LibTorch process's time goes, by ATen op, from `perf record --call-graph dwarf`.

  perf record -F 250 --call-graph dwarf,16384 -o perf.data -- build/dsk finetune CFG
  /usr/bin/python3 scripts/bench/perf_ops.py perf.data [--top 30] [--steps N] [--tid TID]

Debian's libtorch_cpu has no symbols for its kernels, but the dispatcher entry points
(`at::_ops::<op>::call`), the autograd nodes (`torch::autograd::generated::<Node>::apply`) and
the caller's own functions are exported, and dwarf unwinding walks through them. Each sample of
the main thread (the one that calls the ops; with OpenMP/OpenBLAS it also does its share of every
parallel op and waits for the rest, so its samples track wall time) is attributed to the outermost
op on its stack: `fwd:<op>` outside the autograd engine, `bwd:<Node>` inside it, or a named
optimizer / clipping / other caller frame. Prints a markdown table of buckets (matmul, softmax,
norms, ...) and the top attributions, plus how all threads' samples split by library.
"""
import argparse
import collections
import re
import subprocess
import sys

OPT_RE = re.compile(r"(dsk::train::\w+::(step|zero_grad)\b|torch::optim::\w+::(step|zero_grad)\b)")
CLIP_RE = re.compile(r"dsk::train::\w*clip\w*", re.I)
ENGINE_RE = re.compile(r"torch::autograd::Engine::")
NODE_RE = re.compile(r"torch::autograd::(?:generated::)?(\w+)::apply")
OP_RE = re.compile(r"at::_ops::(\w+)::call")
DSK_RE = re.compile(r"(dsk::[\w:]+)")

BUCKETS = [  # (bucket, regex on the attribution without its fwd:/bwd: prefix)
    ("matmul (mm/bmm/addmm/baddbmm)", r"^(mm|bmm|addmm|baddbmm|matmul|linear|Mm|Bmm|Addmm|Baddbmm)"),
    ("attention softmax", r"^(_?softmax|Softmax|_softmax_backward)"),
    ("cross-entropy (log_softmax + nll)", r"(log_softmax|LogSoftmax|nll_loss|NllLoss|cross_entropy)"),
    ("RMSNorm (pow/square/mean/rsqrt)", r"^(pow|Pow|square|mean|Mean|rsqrt|Rsqrt|rms|Rms)"),
    ("SiLU", r"^(silu|Silu)"),
    ("rotary (cat/neg/slice)", r"^(cat|Cat|neg|Neg|slice|Slice)"),
    ("elementwise mul/add/div", r"^(mul|Mul|add|Add|div|Div|sub|Sub)"),
    ("embedding", r"^(embedding|Embedding|index_select|IndexSelect)"),
    ("copies/reshapes/expand", r"^(copy_|clone|reshape|contiguous|expand|Expand|view|View|Unsafe|transpose|Transpose|Permute|to$|_to_copy|ToCopy|repeat|Repeat)"),
    ("zeros/fill/masks", r"^(zeros|zero_|fill_|full|triu|empty)"),
]


def attribute(frames):
    """frames leaf -> root as (sym, dso); returns an attribution key."""
    syms = [s for s, _ in frames]
    root_first = syms[::-1]
    for s in root_first:
        if OPT_RE.search(s):
            return "optimizer (step, zero_grad)"
        if CLIP_RE.search(s):
            return "grad-norm clipping"
    in_engine = any(ENGINE_RE.search(s) for s in syms)
    if in_engine:
        for s in root_first:
            m = NODE_RE.search(s)
            if m:
                return "bwd:" + m.group(1)
        return "bwd:(engine, no node)"
    for s in root_first:
        m = OP_RE.search(s)
        if m:
            return "fwd:" + m.group(1)
    for s in syms:  # innermost named frame of the program itself
        m = DSK_RE.search(s)
        if m:
            return "other:" + re.sub(r"\(.*", "", m.group(1))
    leaf_dso = frames[0][1].rsplit("/", 1)[-1] if frames else "?"
    return "other:" + leaf_dso


def bucket_of(key):
    if key in ("optimizer (step, zero_grad)", "grad-norm clipping"):
        return key
    if key.startswith("other:"):
        return "outside the ops (data, I/O, startup, Python)"
    name = key.split(":", 1)[1]
    for b, rx in BUCKETS:
        if re.search(rx, name):
            return b
    return "other ops"


def parse(script_text):
    """perf script -F pid,tid,period,ip,sym,dso -> ([(tid, period_ns, [(sym, dso), ...])], main tids)"""
    samples, main_tids, head, frames = [], set(), None, []
    for line in script_text.splitlines() + [""]:
        if not line.strip():
            if head is not None:
                samples.append((head[0], head[1], frames))
            head, frames = None, []
            continue
        m = re.match(r"^\s*(\d+)/(\d+)\s+(\d+)\s*$", line)
        if m:
            pid, tid = int(m.group(1)), int(m.group(2))
            if pid == tid:
                main_tids.add(tid)
            head, frames = (tid, int(m.group(3))), []
            continue
        m = re.match(r"\s*[0-9a-f]+ (.*) \((.*)\)\s*$", line)
        if m:
            frames.append((m.group(1), m.group(2)))
    return samples, main_tids


def lib_of(frames):
    if not frames:
        return "?"
    sym, dso = frames[0]
    base = dso.rsplit("/", 1)[-1]
    if "openblas" in base:
        return "OpenBLAS"
    if "gomp" in base:
        return "libgomp (OpenMP runtime: spin/wait)"
    if "kernel" in base:
        if re.search(r"sched|yield|futex|switch|idle", sym):
            return "kernel: scheduling (sched_yield/futex)"
        return "kernel: page faults, zeroing, syscalls"
    if "torch_cpu" in base:
        return "libtorch_cpu (ATen kernels, dispatch, autograd)"
    if "libc.so" in base:
        return "libc (malloc/free, memcpy/memset)"
    return base


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("perf_data")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--steps", type=int, help="training steps in the profile: adds on-CPU ms per step")
    ap.add_argument("--tid", type=int, help="the thread that calls the ops (default: the process's main thread)")
    a = ap.parse_args()
    text = subprocess.run(["perf", "script", "-i", a.perf_data, "-F", "pid,tid,period,ip,sym,dso"],
                          capture_output=True, text=True, errors="replace").stdout
    samples, main_tids = parse(text)
    if not samples:
        sys.exit("perf_ops: no samples (was perf record run with --call-graph dwarf?)")
    main_tid = a.tid
    if main_tid is None:
        counts = collections.Counter(t for t, _, _ in samples if t in main_tids) or \
            collections.Counter(t for t, _, _ in samples)
        main_tid = counts.most_common(1)[0][0]

    keys, ns = collections.Counter(), collections.Counter()
    for t, period, f in samples:
        if t == main_tid:
            k = attribute(f)
            keys[k] += 1
            ns[k] += period
    n_main = sum(keys.values())
    buckets, bucket_ns = collections.Counter(), collections.Counter()
    for k, n in keys.items():
        buckets[bucket_of(k)] += n
        bucket_ns[bucket_of(k)] += ns[k]
    in_ops = n_main - buckets["outside the ops (data, I/O, startup, Python)"]
    fwd = sum(n for k, n in keys.items() if k.startswith("fwd:"))
    bwd = sum(n for k, n in keys.items() if k.startswith("bwd:"))
    per = f"ms/step (/{a.steps})" if a.steps else "ms"

    print(f"main thread {main_tid}: {n_main} samples of {len(samples)} "
          f"({len(set(t for t, _, _ in samples))} threads)\n")
    print(f"| bucket (main thread) | share of samples | share of op time | on-CPU {per} |")
    print("|---|---|---|---|")
    for b, n in buckets.most_common():
        op_share = "" if b.startswith("outside") else f"{100 * n / max(in_ops, 1):.1f}%"
        print(f"| {b} | {100 * n / n_main:.1f}% | {op_share} | {bucket_ns[b] / 1e6 / (a.steps or 1):.1f} |")
    print(f"\nforward {100 * fwd / max(in_ops, 1):.1f}%, backward {100 * bwd / max(in_ops, 1):.1f}% "
          f"of op time; optimizer {100 * keys['optimizer (step, zero_grad)'] / max(in_ops, 1):.1f}%, "
          f"clipping {100 * keys['grad-norm clipping'] / max(in_ops, 1):.1f}%\n")
    print(f"| top attributions (main thread) | share |")
    print("|---|---|")
    for k, n in keys.most_common(a.top):
        print(f"| `{k}` | {100 * n / n_main:.1f}% |")
    libs = collections.Counter(lib_of(f) for _, _, f in samples)
    print("\n| all threads: leaf library | share of samples |")
    print("|---|---|")
    for k, n in libs.most_common(10):
        print(f"| {k} | {100 * n / len(samples):.1f}% |")


if __name__ == "__main__":
    main()
