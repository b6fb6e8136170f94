#!/usr/bin/python3
"""The PyTorch-eager peer of `dsk finetune method=full`, for scripts/bench-train.

  /usr/bin/python3 scripts/bench/peer_train.py --model DIR --tokenizer data/tok512.model \
      --data data/tinyshakespeare.txt --batch 8 --seq 256 --threads 2 --warmup 3 --steps 10

Loads a Hugging Face Llama directory (config.json + F32 model.safetensors, parsed by hand),
runs the same forward as transformers' LlamaForCausalLM in plain eager ops (RMSNorm, rotate-
halves rotary, GQA by expand + reshape (transformers' repeat_kv), causal softmax attention with an explicit T x T score
matrix, SwiGLU, tied or untied head), and trains every weight with torch.optim.AdamW and global
grad-norm clipping. Data: documents split on --separator, each encoded with BOS/EOS by
sentencepiece, concatenated and cut into windows of T+1 tokens taken in order.

Prints one JSON line on stdout: tokens/s over the measured steps (after --warmup steps),
peak RSS (ru_maxrss), losses, per-step times and the share of forward/backward/clip/optimizer;
--profile N adds the top ops by self CPU time from N extra profiled steps.
"""
import argparse
import json
import math
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------
# loading


def load_safetensors(path):
    with open(path, "rb") as fh:
        raw = fh.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"peer_train: {path}: {name} is {info['dtype']}, only F32 is supported")
        b, e = info["data_offsets"]
        arr = np.frombuffer(raw, dtype="<f4", count=(e - b) // 4, offset=base + b)
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out


# ---------------------------------------------------------------------------------------------
# model (shapes: B batch, T time, D hidden, H heads, K kv heads, E head dim, V vocab, F mlp)


class Llama(torch.nn.Module):
    def __init__(self, cfg, weights):
        super().__init__()
        self.cfg = cfg
        self.L = cfg["num_hidden_layers"]
        self.H = cfg["num_attention_heads"]
        self.K = cfg["num_key_value_heads"]
        self.D = cfg["hidden_size"]
        self.E = self.D // self.H
        self.eps = cfg.get("rms_norm_eps", 1e-5)
        self.tied = cfg.get("tie_word_embeddings", False)
        # parameters keyed by HF name ('.' is not allowed in ParameterDict keys)
        self.p = torch.nn.ParameterDict({k.replace(".", "/"): torch.nn.Parameter(v) for k, v in weights.items()})
        theta = cfg.get("rope_theta", 10000.0)
        inv_freq = 1.0 / (theta ** (torch.arange(0, self.E, 2, dtype=torch.float32) / self.E))  # (E/2)
        t = torch.arange(cfg["max_position_embeddings"], dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)                                                          # (Tmax, E/2)
        emb = torch.cat((freqs, freqs), dim=-1)                                                  # (Tmax, E)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def w(self, name):
        return self.p[name.replace(".", "/")]

    def rmsnorm(self, x, weight):
        var = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(var + self.eps))

    @staticmethod
    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

    def forward(self, idx):  # idx (B, T) -> logits (B, T, V)
        B, T = idx.shape
        x = F.embedding(idx, self.w("model.embed_tokens.weight"))        # (B, T, D)
        cos, sin = self.cos[:T], self.sin[:T]                             # (T, E)
        mask = torch.full((T, T), float("-inf")).triu(1)                  # (T, T)
        for i in range(self.L):
            p = f"model.layers.{i}."
            h = self.rmsnorm(x, self.w(p + "input_layernorm.weight"))
            q = F.linear(h, self.w(p + "self_attn.q_proj.weight")).view(B, T, self.H, self.E).transpose(1, 2)
            k = F.linear(h, self.w(p + "self_attn.k_proj.weight")).view(B, T, self.K, self.E).transpose(1, 2)
            v = F.linear(h, self.w(p + "self_attn.v_proj.weight")).view(B, T, self.K, self.E).transpose(1, 2)
            q = q * cos + self.rotate_half(q) * sin                       # (B, H, T, E)
            k = k * cos + self.rotate_half(k) * sin                       # (B, K, T, E)
            if self.K != self.H:  # transformers' repeat_kv: expand + reshape (backward is a sum)
                n = self.H // self.K
                k = k[:, :, None].expand(B, self.K, n, T, self.E).reshape(B, self.H, T, self.E)
                v = v[:, :, None].expand(B, self.K, n, T, self.E).reshape(B, self.H, T, self.E)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.E) + mask    # (B, H, T, T)
            att = torch.softmax(att, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, self.D)           # (B, T, D)
            x = x + F.linear(y, self.w(p + "self_attn.o_proj.weight"))
            h = self.rmsnorm(x, self.w(p + "post_attention_layernorm.weight"))
            g = F.silu(F.linear(h, self.w(p + "mlp.gate_proj.weight")))   # (B, T, F)
            u = F.linear(h, self.w(p + "mlp.up_proj.weight"))
            x = x + F.linear(g * u, self.w(p + "mlp.down_proj.weight"))
        x = self.rmsnorm(x, self.w("model.norm.weight"))
        head = self.w("model.embed_tokens.weight") if self.tied else self.w("lm_head.weight")
        return F.linear(x, head)                                          # (B, T, V)


# ---------------------------------------------------------------------------------------------
# data


def token_windows(text_path, tok_path, sep, T):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tok_path)
    with open(text_path, encoding="utf-8") as fh:
        text = fh.read()
    docs = [d for d in (text.split(sep) if sep else [text]) if d.strip()]
    ids = []
    for d in docs:
        ids.append(sp.bos_id())
        ids.extend(sp.encode(d))
        ids.append(sp.eos_id())
    n = len(ids) // (T + 1)
    if n == 0:
        sys.exit(f"peer_train: {text_path}: fewer than {T + 1} tokens")
    return torch.tensor(ids[: n * (T + 1)], dtype=torch.long).view(n, T + 1), len(ids)


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model directory (config.json + model.safetensors)")
    ap.add_argument("--tokenizer", default="data/tok512.model")
    ap.add_argument("--data", default="data/tinyshakespeare.txt")
    ap.add_argument("--separator", default="\n\n")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2, help="steps run before timing starts")
    ap.add_argument("--steps", type=int, default=10, help="measured steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after timing, run N more steps under torch.autograd.profiler; op table on stderr")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    with open(f"{a.model}/config.json") as fh:
        cfg = json.load(fh)
    model = Llama(cfg, load_safetensors(f"{a.model}/model.safetensors"))
    params = [p for p in model.parameters()]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps, weight_decay=a.weight_decay)

    windows, n_tokens = token_windows(a.data, a.tokenizer, a.separator, a.seq)
    total = a.warmup + a.steps
    losses, times, phases = [], [], []

    def step_fn(step):
        rows = torch.arange(step * a.batch, (step + 1) * a.batch) % windows.shape[0]
        batch = windows[rows]                                             # (B, T+1)
        x, y = batch[:, :-1], batch[:, 1:]
        t0 = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        gnorm = torch.nn.utils.clip_grad_norm_(params, a.clip) if a.clip > 0 else torch.tensor(0.0)
        t3 = time.perf_counter()
        opt.step()
        lv = loss.item()
        t4 = time.perf_counter()
        return lv, float(gnorm), t4 - t0, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)

    # A step's time runs from the end of the previous one (batch building and logging included),
    # as dsk's elapsed_s differences do.
    t_prev = time.perf_counter()
    for step in range(total):
        lv, gnorm, _, ph = step_fn(step)
        print(f"peer step {step + 1}/{total} loss {lv:.4f} grad_norm {gnorm:.3f}", file=sys.stderr)
        now = time.perf_counter()
        times.append(now - t_prev)
        t_prev = now
        losses.append(lv)
        phases.append(ph)
    measured = times[a.warmup:]
    tok_s = a.batch * a.seq * len(measured) / sum(measured)
    phase_s = [sum(p[i] for p in phases[a.warmup:]) for i in range(4)]
    result = {
        "impl": "torch-eager", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "params": n_params, "batch": a.batch, "seq": a.seq, "warmup": a.warmup, "steps": a.steps,
        "tokens_per_s": tok_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "first_loss": losses[0], "last_loss": losses[-1], "data_tokens": n_tokens,
        "phase_share": {k: round(v / sum(measured), 3)
                        for k, v in zip(("forward+loss", "backward", "clip", "optimizer"), phase_s)},
        "step_ms": [round(t * 1e3, 1) for t in times],
    }
    if a.profile > 0:  # extra steps under the autograd profiler (not part of the timing above)
        with torch.autograd.profiler.profile() as prof:
            for step in range(total, total + a.profile):
                step_fn(step)
        avgs = prof.key_averages()
        print(avgs.table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
        tot = sum(e.self_cpu_time_total for e in avgs)
        top = sorted(avgs, key=lambda e: -e.self_cpu_time_total)[:15]
        result["profile_self_share"] = {e.key: round(e.self_cpu_time_total / tot, 4) for e in top}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
