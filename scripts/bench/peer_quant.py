#!/usr/bin/python3
"""The PyTorch peer of dsk's quantized inference, for scripts/bench-quant.

  /usr/bin/python3 scripts/bench/peer_quant.py --model DIR --mode fp32|int8-dynamic --batch 8 --seq 256 \
      --threads 2 --warmup 2 --steps 6

The forward of scripts/bench/peer_train.py's eager Llama, with every decoder linear layer as an
nn.Linear so that torch.ao.quantization.quantize_dynamic can replace it (mode int8-dynamic:
qint8 weights per channel, activations quantized per tensor at run time, quantized engine
onednn — the 'PyTorch dynamic INT8' users reach for; the head stays fp32 as in dsk's default).
Times the no-grad forward of B x T random token windows; prints one JSON line: tokens/s,
peak RSS, engine.
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_train import load_safetensors  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self, D, F_, H, K):
        super().__init__()
        E = D // H
        self.H, self.K, self.E = H, K, E
        self.q_proj = torch.nn.Linear(D, H * E, bias=False)
        self.k_proj = torch.nn.Linear(D, K * E, bias=False)
        self.v_proj = torch.nn.Linear(D, K * E, bias=False)
        self.o_proj = torch.nn.Linear(H * E, D, bias=False)
        self.gate_proj = torch.nn.Linear(D, F_, bias=False)
        self.up_proj = torch.nn.Linear(D, F_, bias=False)
        self.down_proj = torch.nn.Linear(F_, D, bias=False)
        self.n1 = torch.nn.Parameter(torch.ones(D))
        self.n2 = torch.nn.Parameter(torch.ones(D))


class Llama(torch.nn.Module):
    def __init__(self, cfg, w):
        super().__init__()
        D, F_, H = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
        K = cfg["num_key_value_heads"]
        self.eps = cfg.get("rms_norm_eps", 1e-5)
        self.H, self.K, self.E, self.D = H, K, D // H, D
        self.embed = torch.nn.Parameter(w["model.embed_tokens.weight"])
        self.layers = torch.nn.ModuleList()
        for i in range(cfg["num_hidden_layers"]):
            b = Block(D, F_, H, K)
            p = f"model.layers.{i}."
            with torch.no_grad():
                for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    getattr(b, n).weight.copy_(w[p + "self_attn." + n + ".weight"])
                for n in ("gate_proj", "up_proj", "down_proj"):
                    getattr(b, n).weight.copy_(w[p + "mlp." + n + ".weight"])
                b.n1.copy_(w[p + "input_layernorm.weight"])
                b.n2.copy_(w[p + "post_attention_layernorm.weight"])
            self.layers.append(b)
        self.norm = torch.nn.Parameter(w["model.norm.weight"])
        self.head = torch.nn.Parameter(w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"])
        theta = cfg.get("rope_theta", 10000.0)
        inv = 1.0 / (theta ** (torch.arange(0, self.E, 2, dtype=torch.float32) / self.E))
        f = torch.outer(torch.arange(cfg["max_position_embeddings"], dtype=torch.float32), inv)
        emb = torch.cat((f, f), -1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def rms(self, x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    @staticmethod
    def rot(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), -1)

    def forward(self, idx):
        B, T = idx.shape
        x = F.embedding(idx, self.embed)
        cos, sin = self.cos[:T], self.sin[:T]
        mask = torch.full((T, T), float("-inf")).triu(1)
        for b in self.layers:
            h = self.rms(x, b.n1)
            q = b.q_proj(h).view(B, T, self.H, self.E).transpose(1, 2)
            k = b.k_proj(h).view(B, T, self.K, self.E).transpose(1, 2)
            v = b.v_proj(h).view(B, T, self.K, self.E).transpose(1, 2)
            q = q * cos + self.rot(q) * sin
            k = k * cos + self.rot(k) * sin
            if self.K != self.H:
                n = self.H // self.K
                k = k[:, :, None].expand(B, self.K, n, T, self.E).reshape(B, self.H, T, self.E)
                v = v[:, :, None].expand(B, self.K, n, T, self.E).reshape(B, self.H, T, self.E)
            att = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(self.E) + mask, -1)
            x = x + b.o_proj((att @ v).transpose(1, 2).reshape(B, T, self.D))
            h = self.rms(x, b.n2)
            x = x + b.down_proj(F.silu(b.gate_proj(h)) * b.up_proj(h))
        return F.linear(self.rms(x, self.norm), self.head)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["fp32", "int8-dynamic"], default="fp32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    model = Llama(cfg, load_safetensors(os.path.join(a.model, "model.safetensors"))).eval()
    if a.mode == "int8-dynamic":
        torch.backends.quantized.engine = "onednn"
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg["vocab_size"], (a.batch, a.seq), generator=g)
    with torch.no_grad():
        for _ in range(a.warmup):
            model(idx)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            model(idx)
        dt = time.perf_counter() - t0
    print(json.dumps({"mode": a.mode, "tokens_per_s": a.batch * a.seq * a.steps / dt,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "engine": torch.backends.quantized.engine}))


if __name__ == "__main__":
    main()
