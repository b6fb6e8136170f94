#!/usr/bin/python3
"""The PyTorch peer of dsk's pruned models, for scripts/bench-prune.

  /usr/bin/python3 scripts/bench/peer_prune.py --model DIR --batch 8 --seq 256 --threads 2 \
      --warmup 1 --steps 6

Reads a Hugging Face Llama directory as dsk prune writes it (config.json + F32 model.safetensors)
and times the no-grad eager forward of B x T random token windows. The forward honours what
structured pruning changes: num_hidden_layers, intermediate_size, num_attention_heads /
num_key_value_heads with an explicit head_dim (H * head_dim != hidden_size after attention-head
pruning), tied or untied head. Unstructured / N:M zeros are multiplied densely, as any plain
torch.nn.functional.linear does. Prints one JSON line: tokens/s, peak RSS, parameter counts.
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_train import load_safetensors  # noqa: E402


class Llama:
    """Plain functional forward over the weights dict (no nn.Module: nothing to copy)."""

    def __init__(self, cfg, w):
        self.C = cfg["hidden_size"]
        self.H = cfg["num_attention_heads"]
        self.K = cfg.get("num_key_value_heads") or self.H
        self.D = cfg.get("head_dim") or self.C // self.H
        self.L = cfg["num_hidden_layers"]
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.embed = w["model.embed_tokens.weight"]
        self.head = self.embed if cfg.get("tie_word_embeddings", False) else w["lm_head.weight"]
        self.norm = w["model.norm.weight"]
        self.layers = []
        for i in range(self.L):
            p = f"model.layers.{i}."
            self.layers.append({n: w[p + k + ".weight"] for n, k in (
                ("n1", "input_layernorm"), ("n2", "post_attention_layernorm"),
                ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
                ("down", "mlp.down_proj"))})
        theta = cfg.get("rope_theta", 10000.0)
        inv = 1.0 / (theta ** (torch.arange(0, self.D, 2, dtype=torch.float32) / self.D))
        f = torch.outer(torch.arange(cfg["max_position_embeddings"], dtype=torch.float32), inv)
        emb = torch.cat((f, f), -1)
        self.cos, self.sin = emb.cos(), emb.sin()
        self.params = sum(t.numel() for t in w.values())
        self.nonzero = sum(int(t.count_nonzero()) for t in w.values())

    def rms(self, x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    @staticmethod
    def rot(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), -1)

    def __call__(self, idx):
        B, T = idx.shape
        H, K, D = self.H, self.K, self.D
        x = F.embedding(idx, self.embed)
        cos, sin = self.cos[:T], self.sin[:T]
        mask = torch.full((T, T), float("-inf")).triu(1)
        for b in self.layers:
            h = self.rms(x, b["n1"])
            q = F.linear(h, b["q"]).view(B, T, H, D).transpose(1, 2)
            k = F.linear(h, b["k"]).view(B, T, K, D).transpose(1, 2)
            v = F.linear(h, b["v"]).view(B, T, K, D).transpose(1, 2)
            q = q * cos + self.rot(q) * sin
            k = k * cos + self.rot(k) * sin
            if K != H:
                k = k.repeat_interleave(H // K, dim=1)
                v = v.repeat_interleave(H // K, dim=1)
            att = torch.softmax((q @ k.transpose(-2, -1)) * D ** -0.5 + mask, -1)
            x = x + F.linear((att @ v).transpose(1, 2).reshape(B, T, H * D), b["o"])
            h = self.rms(x, b["n2"])
            x = x + F.linear(F.silu(F.linear(h, b["gate"])) * F.linear(h, b["up"]), b["down"])
        return F.linear(self.rms(x, self.norm), self.head)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    model = Llama(cfg, load_safetensors(os.path.join(a.model, "model.safetensors")))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg["vocab_size"], (a.batch, a.seq), generator=g)
    with torch.no_grad():
        for _ in range(a.warmup):
            model(idx)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            model(idx)
        dt = time.perf_counter() - t0
    print(json.dumps({"tokens_per_s": a.batch * a.seq * a.steps / dt, "seconds": dt,
                      "params": model.params, "nonzero": model.nonzero,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
