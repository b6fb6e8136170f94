#!/usr/bin/python3
"""Independent reference for dsk's Hugging Face models: the forward of transformers'
LlamaForCausalLM (eager attention, no cache), written from its definition with torch only.

Reads a Hugging Face directory — config.json and a single model.safetensors, parsed by hand
(8-byte little-endian header length, JSON header, raw little-endian data) — and writes the logits
[T, V] (float32) of the given token ids to a safetensors file with the tensor "logits".

What it follows (transformers' modeling_llama):
  head_dim       config["head_dim"], else hidden_size // num_attention_heads; q_proj [H*D, C],
                 k/v_proj [KV*D, C], o_proj [C, H*D] (H*D need not equal C)
  RMSNorm        in float32: x * rsqrt(mean(x^2) + eps), cast back, times weight
  rotary         inv_freq = 1 / theta^(arange(0, D, 2) / D); emb = cat(freqs, freqs);
                 x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1)
  attention      repeat_kv (kv head j serves query heads j*G .. j*G+G-1), softmax(QK^T / sqrt(D) +
                 causal mask) in float32, then V, heads concatenated, o_proj
  MLP            down(silu(gate(x)) * up(x))
  classifier     lm_head.weight, or embed_tokens.weight when tie_word_embeddings
Only what dsk's golden test needs: no rope_scaling, no sliding window.

--adapter DIR applies a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) the
way PEFT's LoraLayer does for a Linear: W x + (lora_alpha / r) B A x, i.e. W += scale * B @ A with
scale = lora_alpha / r (lora_alpha / sqrt(r) when use_rslora), for every module named
"base_model.model.<module>.lora_A.weight" / ".lora_B.weight" in the file.

usage: hf_llama_ref.py --model DIR --tokens 1,2,3 --out FILE [--adapter DIR] [--threads N]
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            raw = np.frombuffer(data[base + start:base + end], dtype=np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[base + start:base + end], dtype=DTYPES[info["dtype"]])
        out[name] = torch.from_numpy(arr.copy()).reshape(info["shape"])
    return out


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        b = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def rms_norm(x, w, eps):
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dtype)


def rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


def repeat_kv(x, n_rep):  # [B, KV, T, D] -> [B, KV*n_rep, T, D]
    b, kv, t, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)


def linear(x, w, b=None):
    y = x @ w.t()
    return y if b is None else y + b


def forward(cfg, w, tokens):
    C = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads") or H
    D = cfg.get("head_dim") or C // H
    L = cfg["num_hidden_layers"]
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    if cfg.get("rope_scaling"):
        sys.exit("hf_llama_ref.py: rope_scaling is not implemented")
    bias = cfg.get("attention_bias", False) or cfg.get("model_type") == "qwen2"

    ids = torch.tensor(tokens, dtype=torch.long)[None, :]  # [1, T]
    T = ids.shape[1]
    x = w["model.embed_tokens.weight"][ids]  # [1, T, C]

    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))  # [D/2]
    pos = torch.arange(T, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]  # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]  # [1, 1, T, D]
    mask = torch.full((T, T), float("-inf")).triu(1)

    for i in range(L):
        p = f"model.layers.{i}."
        residual = x
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        a = p + "self_attn."
        q = linear(h, w[a + "q_proj.weight"], w.get(a + "q_proj.bias") if bias else None)
        k = linear(h, w[a + "k_proj.weight"], w.get(a + "k_proj.bias") if bias else None)
        v = linear(h, w[a + "v_proj.weight"], w.get(a + "v_proj.bias") if bias else None)
        q = q.view(1, T, H, D).transpose(1, 2)  # [1, H, T, D]
        k = k.view(1, T, KV, D).transpose(1, 2)
        v = v.view(1, T, KV, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = repeat_kv(k, H // KV)
        v = repeat_kv(v, H // KV)
        scores = torch.matmul(q, k.transpose(2, 3)) * (D ** -0.5) + mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(probs, v).transpose(1, 2).reshape(1, T, H * D)
        x = residual + linear(o, w[a + "o_proj.weight"])

        residual = x
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        m = p + "mlp."
        gate = linear(h, w[m + "gate_proj.weight"])
        up = linear(h, w[m + "up_proj.weight"])
        x = residual + linear(torch.nn.functional.silu(gate) * up, w[m + "down_proj.weight"])

    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else w["lm_head.weight"]
    return linear(x, head)[0].float()  # [T, V]


def apply_peft_lora(w, adapter_dir):
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        acfg = json.load(f)
    if acfg.get("peft_type") != "LORA" or acfg.get("bias", "none") != "none" or acfg.get("fan_in_fan_out"):
        sys.exit("hf_llama_ref.py: only plain LoRA adapters (bias none, no fan_in_fan_out)")
    r, alpha = acfg["r"], acfg["lora_alpha"]
    scale = alpha / (r ** 0.5) if acfg.get("use_rslora") else alpha / r
    ad = read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    prefix, suffix = "base_model.model.", ".lora_A.weight"
    modules = [n[len(prefix):-len(suffix)] for n in ad if n.startswith(prefix) and n.endswith(suffix)]
    if not modules or len(ad) != 2 * len(modules):
        sys.exit("hf_llama_ref.py: adapter tensors are not lora_A/lora_B pairs")
    for m in modules:
        a = ad[prefix + m + ".lora_A.weight"].to(torch.float32)  # [r, in]
        b = ad[prefix + m + ".lora_B.weight"].to(torch.float32)  # [out, r]
        if a.shape[0] != r or b.shape[1] != r:
            sys.exit(f"hf_llama_ref.py: {m}: rank {a.shape[0]}/{b.shape[1]}, adapter_config says {r}")
        w[m + ".weight"] = w[m + ".weight"] + scale * (b @ a)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--adapter")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    w = read_safetensors(os.path.join(args.model, "model.safetensors"))
    for name in w:
        w[name] = w[name].to(torch.float32)
    if args.adapter:
        apply_peft_lora(w, args.adapter)
    tokens = [int(t) for t in args.tokens.split(",")]
    with torch.no_grad():
        logits = forward(cfg, w, tokens)
    write_safetensors(args.out, {"logits": logits, "tokens": torch.tensor(tokens, dtype=torch.float32)})


if __name__ == "__main__":
    main()
