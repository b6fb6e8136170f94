#!/usr/bin/python3
"""Would fewer, larger GEMMs make the 25m training step faster? Measured on the bench's 25m shapes.

  OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 scripts/bench/gemm_fusion.py [--rounds 15] [--threads 2]

Same OpenBLAS as dsk (Debian's torch 1.13 calls the same libblas), so the ratios carry over:
  * q/k/v as three [M, C] x [C, C] products vs one product against the concatenated [3C, C] weight,
    forward + backward, the fused side paying for the concatenation and the split in autograd;
  * gate/up as two [M, C] x [C, F] products vs one against [2F, C];
  * the attention's batched products (query blocks of 64, head dim 64) with OpenBLAS on 1 and 2
    threads (child processes: OpenBLAS reads OPENBLAS_NUM_THREADS once, when it loads).
Rounds alternate the variants, so drift on a shared machine hits both; min and median per call.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time


def timed(fn, reps=5):
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def fusion(args):
    import torch
    torch.set_num_threads(args.threads)
    M, C, F = args.rows, args.hidden, args.ffn
    x = torch.randn(M, C, requires_grad=True)

    def pair(outs):
        ws = [(torch.randn(o, C) * 0.02).requires_grad_() for o in outs]
        g = torch.randn(M, sum(outs))

        def separate():
            ys = [torch.nn.functional.linear(x, w) for w in ws]
            torch.autograd.backward(ys, list(g.split(outs, 1)))

        def fused():
            ys = torch.nn.functional.linear(x, torch.cat(ws, 0)).split(outs, 1)
            torch.autograd.backward(ys, list(g.split(outs, 1)))

        return separate, fused

    cases = {"q/k/v": pair([C, C, C]), "gate/up": pair([F, F])}
    for sep, fus in cases.values():
        for _ in range(3):
            sep(), fus()
    res = {(k, v): [] for k in cases for v in ("separate", "fused")}
    for _ in range(args.rounds):
        for k, (sep, fus) in cases.items():
            res[(k, "separate")].append(timed(sep))
            res[(k, "fused")].append(timed(fus))
    print(f"M={M} C={C} F={F}, {args.threads} threads, forward + backward, ms per call")
    print("| projections | separate min / median | fused min / median | fused / separate (median) |")
    print("|---|---|---|---|")
    for k in cases:
        s, f = res[(k, "separate")], res[(k, "fused")]
        print(f"| {k} | {min(s):.1f} / {statistics.median(s):.1f} | {min(f):.1f} / {statistics.median(f):.1f} | "
              f"{statistics.median(f) / statistics.median(s):.3f} |")


def bmm(args):
    import torch
    torch.set_num_threads(args.threads)
    shapes = [((64, 64, 64), (64, 64, 256)), ((64, 64, 256), (64, 256, 64))]
    for sa, sb in shapes:
        a, b = torch.randn(*sa), torch.randn(*sb)
        for _ in range(3):
            torch.bmm(a, b)
        ms = min(timed(lambda: torch.bmm(a, b), 50) for _ in range(args.rounds))
        flop = 2 * sa[0] * sa[1] * sa[2] * sb[2]
        print(f"| {os.environ.get('OPENBLAS_NUM_THREADS')} | {list(sa)} x {list(sb)} | {ms:.2f} | "
              f"{flop / ms / 1e6:.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=2048, help="B*T (bench: 8 x 256)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=1376)
    ap.add_argument("--bmm-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bmm_child:
        return bmm(args)
    fusion(args)
    print("\nattention batched products (torch.bmm), best of rounds")
    print("| OpenBLAS threads | shapes | ms | GFLOP/s |")
    print("|---|---|---|---|")
    sys.stdout.flush()
    for n in (1, args.threads):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(n))
        subprocess.run([sys.executable, __file__, "--bmm-child", "--rounds", str(max(3, args.rounds // 3)),
                        "--threads", str(args.threads)], env=env, check=True)


if __name__ == "__main__":
    main()
