#!/usr/bin/python3
"""Independent reference numbers for the llama2.c golden tests (tests/golden/test_llama2c_golden.cpp).

Reads a llama2.c checkpoint with struct/numpy (no dsk code), runs the llama2.c forward in PyTorch
(fp32, rotary tables taken from the checkpoint's own freq_cis arrays, complex multiplication,
repeated kv heads), and writes one safetensors file (written by hand below) holding:
  tokens_a, logits_a   BOS + "Once upon a time, there was a little girl named Lily." [16], [16, V]
  tokens_b, logits_b   BOS + 199 fixed pseudo-random ids [200], [200, V]
  loss_b               mean next-token cross-entropy over tokens_b [1]
  grad.<hf name>       d loss_b / d parameter, under the Hugging Face name of the parameter
  greedy               256 greedy tokens after BOS, full-sequence recompute at every step (no cache)
metadata: "llama2c_stop" = how many greedy tokens precede the first BOS (llama2.c's run stops there).

usage: /usr/bin/python3 llama2c_ref.py --model stories260K.bin --out ref.safetensors [--threads 1]
"""
import argparse
import json
import struct

import numpy as np
import torch
import torch.nn.functional as F

SENTENCE = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426]
BOS = 1


def read_llama2c(path):
    with open(path, "rb") as f:
        raw = f.read()
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // n_heads
    floats = np.frombuffer(raw, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        out = torch.from_numpy(floats[pos:pos + n].reshape(shape).copy())
        pos += n
        return out

    w = {"tok": take(vocab, dim), "rms_att": take(n_layers, dim),
         "wq": take(n_layers, n_heads * head, dim), "wk": take(n_layers, n_kv_heads * head, dim),
         "wv": take(n_layers, n_kv_heads * head, dim), "wo": take(n_layers, dim, n_heads * head),
         "rms_ffn": take(n_layers, dim), "w1": take(n_layers, hidden, dim), "w2": take(n_layers, dim, hidden),
         "w3": take(n_layers, hidden, dim), "rms_final": take(dim),
         "freq_real": take(seq_len, head // 2), "freq_imag": take(seq_len, head // 2)}
    if not shared:
        w["wcls"] = take(vocab, dim)
    assert pos == floats.size, "file size does not match the header"
    cfg = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
               vocab=vocab, seq_len=seq_len, shared=shared, head=head)
    return cfg, w


class Reference:
    """Parameters as separate leaf tensors per layer, each under its Hugging Face name."""

    def __init__(self, cfg, w):
        self.cfg = cfg
        L = cfg["n_layers"]
        p = {"model.embed_tokens.weight": w["tok"], "model.norm.weight": w["rms_final"]}
        llama2c_to_hf = {"rms_att": "input_layernorm.weight", "wq": "self_attn.q_proj.weight",
                         "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
                         "wo": "self_attn.o_proj.weight", "rms_ffn": "post_attention_layernorm.weight",
                         "w1": "mlp.gate_proj.weight", "w2": "mlp.down_proj.weight", "w3": "mlp.up_proj.weight"}
        for i in range(L):
            for c_name, hf in llama2c_to_hf.items():
                p[f"model.layers.{i}.{hf}"] = w[c_name][i].clone()
        if "wcls" in w:
            p["lm_head.weight"] = w["wcls"]
        self.params = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        self.freqs = torch.complex(w["freq_real"], w["freq_imag"])  # [seq_len, head/2]

    def rmsnorm(self, x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))

    def rope(self, x):  # x [T, n, head]: rotate (x0, x1), (x2, x3), ... as complex numbers
        T = x.shape[0]
        xc = torch.view_as_complex(x.reshape(T, x.shape[1], -1, 2))
        return torch.view_as_real(xc * self.freqs[:T].unsqueeze(1)).reshape(x.shape)

    def forward(self, tokens):  # tokens: list of ids -> logits [T, V]
        c, p = self.cfg, self.params
        T, H, KV, hd = len(tokens), c["n_heads"], c["n_kv_heads"], c["head"]
        x = p["model.embed_tokens.weight"][torch.tensor(tokens)]  # [T, dim]
        mask = torch.full((T, T), float("-inf")).triu(1)
        for i in range(c["n_layers"]):
            q_ = lambda name: p[f"model.layers.{i}.{name}"]
            h = self.rmsnorm(x, q_("input_layernorm.weight"))
            q = self.rope((h @ q_("self_attn.q_proj.weight").T).view(T, H, hd))
            k = self.rope((h @ q_("self_attn.k_proj.weight").T).view(T, KV, hd))
            v = (h @ q_("self_attn.v_proj.weight").T).view(T, KV, hd)
            k = k.repeat_interleave(H // KV, dim=1)  # query head h reads kv head h // (H / KV)
            v = v.repeat_interleave(H // KV, dim=1)
            att = torch.einsum("thd,shd->hts", q, k) / (hd ** 0.5) + mask
            out = torch.einsum("hts,shd->thd", att.softmax(-1), v).reshape(T, H * hd)
            x = x + out @ q_("self_attn.o_proj.weight").T
            h = self.rmsnorm(x, q_("post_attention_layernorm.weight"))
            ffn = F.silu(h @ q_("mlp.gate_proj.weight").T) * (h @ q_("mlp.up_proj.weight").T)
            x = x + ffn @ q_("mlp.down_proj.weight").T
        x = self.rmsnorm(x, p["model.norm.weight"])
        cls = p.get("lm_head.weight", p["model.embed_tokens.weight"])
        return x @ cls.T


def write_safetensors(path, tensors, metadata):
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--greedy", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg, w = read_llama2c(args.model)
    ref = Reference(cfg, w)
    out = {}

    tokens_a = [BOS] + SENTENCE
    tokens_b = [BOS] + np.random.RandomState(1234).randint(3, cfg["vocab"], size=199).tolist()
    with torch.no_grad():
        out["tokens_a"] = torch.tensor(tokens_a, dtype=torch.int64)
        out["logits_a"] = ref.forward(tokens_a)
        out["tokens_b"] = torch.tensor(tokens_b, dtype=torch.int64)
        out["logits_b"] = ref.forward(tokens_b)

    loss = F.cross_entropy(ref.forward(tokens_b)[:-1], torch.tensor(tokens_b[1:]))
    loss.backward()
    out["loss_b"] = loss.detach().reshape(1)
    for name, t in ref.params.items():
        out["grad." + name] = t.grad

    seq = [BOS]
    with torch.no_grad():
        for _ in range(args.greedy):
            seq.append(int(ref.forward(seq)[-1].argmax()))
    greedy = seq[1:]
    stop = greedy.index(BOS) if BOS in greedy else len(greedy)
    out["greedy"] = torch.tensor(greedy, dtype=torch.int64)

    write_safetensors(args.out, out, {"llama2c_stop": str(stop), "torch": torch.__version__})


if __name__ == "__main__":
    main()
