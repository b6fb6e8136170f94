#!/usr/bin/python3
"""fp32 GEMM peak of this machine, as scripts/bench-train reports MFU against it.

  /usr/bin/python3 scripts/bench/gemm_peak.py --threads 2 [--n 2048] [--reps 10]

Times torch.matmul of two n x n fp32 matrices (Debian's torch -> libblas.so.3 -> OpenBLAS when
installed) on the given threads; prints one JSON line with the best and median GFLOP/s.
"""
import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x, y = torch.randn(a.n, a.n), torch.randn(a.n, a.n)
    out = torch.empty(a.n, a.n)
    for _ in range(2):
        torch.matmul(x, y, out=out)
    rates = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        torch.matmul(x, y, out=out)
        rates.append(2.0 * a.n ** 3 / (time.perf_counter() - t0) / 1e9)
    rates.sort()
    print(json.dumps({"n": a.n, "threads": torch.get_num_threads(), "best_gflops": rates[-1],
                      "median_gflops": rates[len(rates) // 2]}))


if __name__ == "__main__":
    main()
