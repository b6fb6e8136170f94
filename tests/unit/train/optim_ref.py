#!/usr/bin/python3
"""Independent references for tests/unit/train/test_optim.cpp.

Usage: /usr/bin/python3 optim_ref.py DIR

DIR/cases.json lists cases; DIR/<id>.in.bin holds float64 little-endian values: every parameter's
initial value (in order), then for each step every parameter's gradient. For each case this
writes DIR/<id>.out.bin (float64): the final parameters, or for "clip" cases the total norm
followed by the clipped gradients.

AdamW, SGD and gradient clipping use torch 1.13 (Debian's python3-torch). Lion and Adafactor have
no torch implementation there: they are written below from the papers' update rules in numpy.
Weight decay applies to parameters with >= 2 dimensions unless hparams.weight_decay_all is true.
"""
import json
import math
import os
import sys

import numpy as np
import torch

torch.set_num_threads(1)


def as_bool(text):
    return str(text).strip().lower() in ("true", "yes", "on", "1")


def pair(text):
    a, b = str(text).strip().strip("[]").split(",")
    return float(a), float(b)


def decays(shape, hp):
    return len(shape) >= 2 or as_bool(hp.get("weight_decay_all", "false"))


def load(case, d):
    raw = np.fromfile(os.path.join(d, case["id"] + ".in.bin"), dtype="<f8")
    shapes = [tuple(p["shape"]) for p in case["params"]]
    sizes = [int(np.prod(s)) if s else 1 for s in shapes]
    off = 0

    def take(i):
        nonlocal off
        a = raw[off:off + sizes[i]].reshape(shapes[i])
        off += sizes[i]
        return a

    init = [take(i) for i in range(len(shapes))]
    grads = [[take(i) for i in range(len(shapes))] for _ in range(case["steps"])]
    assert off == raw.size, "input size mismatch"
    return init, grads


def skipped(case):
    return {(s, i) for s, i in case.get("skip", [])}


def run_torch(case, init, grads):
    dt = {"float32": torch.float32, "float64": torch.float64}[case["dtype"]]
    hp = case["hparams"]
    params = [torch.tensor(a, dtype=dt, requires_grad=True) for a in init]
    wd = float(hp.get("weight_decay", "0.0"))
    dec = [p for p, a in zip(params, init) if decays(a.shape, hp)]
    nodec = [p for p, a in zip(params, init) if not decays(a.shape, hp)]
    groups = [g for g in ({"params": dec, "weight_decay": wd}, {"params": nodec, "weight_decay": 0.0}) if g["params"]]
    lr0 = case["lrs"][0]
    if case["optimizer"] == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr0, betas=pair(hp.get("betas", "0.9,0.999")),
                                eps=float(hp.get("eps", "1e-8")))
    else:
        opt = torch.optim.SGD(groups, lr=lr0, momentum=float(hp.get("momentum", "0.0")),
                              dampening=float(hp.get("dampening", "0.0")),
                              nesterov=as_bool(hp.get("nesterov", "false")))
    skip = skipped(case)
    for s in range(case["steps"]):
        for g in opt.param_groups:
            g["lr"] = case["lrs"][s]
        for i, p in enumerate(params):
            p.grad = None if (s, i) in skip else torch.tensor(grads[s][i], dtype=dt)
        opt.step()
    return [p.detach().double().numpy() for p in params]


def run_lion(case, init, grads):
    dt = np.dtype(case["dtype"])
    hp = case["hparams"]
    b1, b2 = pair(hp.get("betas", "0.9,0.99"))
    wd = float(hp.get("weight_decay", "0.0"))
    params = [a.astype(dt) for a in init]
    m = [np.zeros_like(p) for p in params]
    skip = skipped(case)
    for s in range(case["steps"]):
        lr = case["lrs"][s]
        for i in range(len(params)):
            if (s, i) in skip:
                continue
            g = grads[s][i].astype(dt)
            c = m[i] * dt.type(b1) + dt.type(1 - b1) * g
            if decays(init[i].shape, hp):
                params[i] = params[i] * dt.type(1 - lr * wd)
            params[i] = params[i] - dt.type(lr) * np.sign(c)
            m[i] = m[i] * dt.type(b2) + dt.type(1 - b2) * g
    return [p.astype(np.float64) for p in params]


def run_adafactor(case, init, grads):
    dt = np.dtype(case["dtype"])
    hp = case["hparams"]
    eps1 = float(hp.get("eps1", "1e-30"))
    eps2 = float(hp.get("eps2", "1e-3"))
    clip = float(hp.get("clip_threshold", "1.0"))
    decay_rate = float(hp.get("decay_rate", "-0.8"))
    beta1 = float(hp.get("beta1", "0.0"))
    wd = float(hp.get("weight_decay", "0.0"))
    scale = as_bool(hp.get("scale_parameter", "false"))
    relative = as_bool(hp.get("relative_step", "false"))
    warmup = as_bool(hp.get("warmup_init", "false"))
    params = [a.astype(dt) for a in init]
    state = [{"t": 0} for _ in params]
    skip = skipped(case)

    def rms(x):
        return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))

    for s in range(case["steps"]):
        for i, p in enumerate(params):
            if (s, i) in skip:
                continue
            g = grads[s][i].astype(dt)
            st = state[i]
            st["t"] += 1
            t = st["t"]
            lr = case["lrs"][s]
            if relative:
                lr = min(1e-6 * t if warmup else 1e-2, 1.0 / math.sqrt(t))
            if scale:
                lr *= max(eps2, rms(p))
            beta2t = 1.0 - t ** decay_rate
            u = g * g + dt.type(eps1)
            if p.ndim >= 2:
                row = st.get("row", np.zeros(p.shape[:-1], dt))
                col = st.get("col", np.zeros(p.shape[:-2] + p.shape[-1:], dt))
                row = dt.type(beta2t) * row + dt.type(1 - beta2t) * u.mean(axis=-1)
                col = dt.type(beta2t) * col + dt.type(1 - beta2t) * u.mean(axis=-2)
                st["row"], st["col"] = row, col
                v = (row / row.mean(axis=-1, keepdims=True))[..., :, None] * col[..., None, :]
            else:
                v = dt.type(beta2t) * st.get("v", np.zeros(p.shape, dt)) + dt.type(1 - beta2t) * u
                st["v"] = v
            u = g / np.sqrt(v)
            u = u / dt.type(max(1.0, rms(u) / clip))
            u = u * dt.type(lr)
            if beta1 > 0:
                st["m"] = dt.type(beta1) * st.get("m", np.zeros(p.shape, dt)) + dt.type(1 - beta1) * u
                u = st["m"]
            if wd and decays(p.shape, hp):
                p = p - dt.type(wd * lr) * p
            params[i] = (p - u).astype(dt)
    return [p.astype(np.float64) for p in params]


def run_clip(case, init, grads):
    dt = {"float32": torch.float32, "float64": torch.float64}[case["dtype"]]
    params = [torch.tensor(a, dtype=dt, requires_grad=True) for a in init]
    skip = skipped(case)
    for i, p in enumerate(params):
        p.grad = None if (0, i) in skip else torch.tensor(grads[0][i], dtype=dt)
    total = torch.nn.utils.clip_grad_norm_(params, case["max_norm"]) if case["max_norm"] > 0 else None
    if total is None:
        total = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    out = [np.array([float(total)])]
    out += [p.grad.double().numpy() for i, p in enumerate(params) if (0, i) not in skip]
    return out


def main():
    d = sys.argv[1]
    with open(os.path.join(d, "cases.json")) as f:
        cases = json.load(f)
    for case in cases:
        init, grads = load(case, d)
        kind = case["optimizer"]
        if kind in ("adamw", "sgd"):
            out = run_torch(case, init, grads)
        elif kind == "lion":
            out = run_lion(case, init, grads)
        elif kind == "adafactor":
            out = run_adafactor(case, init, grads)
        elif kind == "clip":
            out = run_clip(case, init, grads)
        else:
            raise SystemExit("unknown case kind " + kind)
        np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in out]).astype("<f8").tofile(
            os.path.join(d, case["id"] + ".out.bin"))


if __name__ == "__main__":
    main()
