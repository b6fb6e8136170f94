#!/usr/bin/python3
"""Writes the Hugging Face Llama model directories that scripts/bench-train trains on.

  /usr/bin/python3 scripts/bench/make_model.py --size 6m --out DIR [--seed 0]
  /usr/bin/python3 scripts/bench/make_model.py --from-llama2c data/stories260K.bin --out DIR

DIR gets config.json (LlamaForCausalLM) and model.safetensors (F32, written by hand: no
safetensors package on Debian). Random sizes: seeded N(0, 0.02) weights, norms = 1.
--from-llama2c converts a llama2.c (version 0) checkpoint: q/k rows are permuted from
interleaved rotary pairs to Hugging Face's rotate-halves layout. Prints one JSON line
(size, exact parameter counts) on stdout.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

# name -> (hidden, intermediate, layers, heads, kv_heads, vocab, max_pos, tied)
SIZES = {
    "260k": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=5, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True),
    "6m": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=8,
               num_key_value_heads=4, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True),
    "25m": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=8, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False),
}


def hf_config(shape):
    c = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "attention_bias": False,
    }
    c.update(shape)
    return c


def tensor_shapes(c):
    """[(hf_name, shape)] in a stable order."""
    d, f, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    hd = d // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (c["vocab_size"], d))]
    for i in range(L):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (d, d)),
            (p + "self_attn.k_proj.weight", (kv, d)),
            (p + "self_attn.v_proj.weight", (kv, d)),
            (p + "self_attn.o_proj.weight", (d, d)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (f, d)),
            (p + "mlp.up_proj.weight", (f, d)),
            (p + "mlp.down_proj.weight", (d, f)),
        ]
    out.append(("model.norm.weight", (d,)))
    if not c["tie_word_embeddings"]:
        out.append(("lm_head.weight", (c["vocab_size"], d)))
    return out


def random_weights(c, seed):
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in tensor_shapes(c):
        if name.endswith("norm.weight"):
            w[name] = np.ones(shape, dtype=np.float32)
        else:
            w[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(np.float32)
    return w


def read_llama2c(path):
    """llama2.c version-0 checkpoint -> (config, HF-named weights)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    dim, hidden, L, H, KV, vocab, seq = struct.unpack("<7i", raw[:28])
    tied = vocab > 0
    vocab = abs(vocab)
    hd = dim // H
    kvd = KV * hd
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > data.size:
            sys.exit(f"make_model: {path}: truncated llama2.c checkpoint")
        t = data[pos:pos + n].reshape(shape).copy()
        pos += n
        return t

    emb = take(vocab, dim)
    rms_att = take(L, dim)
    wq, wk, wv, wo = take(L, dim, dim), take(L, kvd, dim), take(L, kvd, dim), take(L, dim, dim)
    rms_ffn = take(L, dim)
    w1, w2, w3 = take(L, hidden, dim), take(L, dim, hidden), take(L, hidden, dim)
    rms_final = take(dim)
    take(seq, hd // 2)  # freq_cis_real (unused)
    take(seq, hd // 2)  # freq_cis_imag
    wcls = None if tied else take(vocab, dim)

    def permute(w, heads):  # interleaved pairs -> rotate-halves (as HF's conversion script)
        rows, cols = w.shape
        return w.reshape(heads, rows // heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)

    c = hf_config(dict(hidden_size=dim, intermediate_size=hidden, num_hidden_layers=L, num_attention_heads=H,
                       num_key_value_heads=KV, vocab_size=vocab, max_position_embeddings=seq,
                       tie_word_embeddings=tied))
    w = {"model.embed_tokens.weight": emb}
    for i in range(L):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = rms_att[i]
        w[p + "self_attn.q_proj.weight"] = permute(wq[i], H)
        w[p + "self_attn.k_proj.weight"] = permute(wk[i], KV)
        w[p + "self_attn.v_proj.weight"] = wv[i]
        w[p + "self_attn.o_proj.weight"] = wo[i]
        w[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        w[p + "mlp.gate_proj.weight"] = w1[i]
        w[p + "mlp.up_proj.weight"] = w3[i]
        w[p + "mlp.down_proj.weight"] = w2[i]
    w["model.norm.weight"] = rms_final
    if wcls is not None:
        w["lm_head.weight"] = wcls
    return c, w


def write_safetensors(path, weights, order):
    header, off = {}, 0
    for name in order:
        t = weights[name]
        n = t.size * 4
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(hj)))
        fh.write(hj)
        for name in order:
            fh.write(np.ascontiguousarray(weights[name], dtype="<f4").tobytes())
    os.replace(tmp, path)


def count_params(c):
    total = sum(int(np.prod(s)) for _, s in tensor_shapes(c))
    emb = c["vocab_size"] * c["hidden_size"]
    head = emb  # the output projection is a matmul whether tied or not
    # matmul params: everything except the embedding lookup and the norm vectors, plus the head
    norms = (2 * c["num_hidden_layers"] + 1) * c["hidden_size"]
    untied_head = 0 if c["tie_word_embeddings"] else emb
    matmul = total - emb - norms - untied_head + head
    return total, matmul


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), help="random-init size")
    ap.add_argument("--from-llama2c", metavar="BIN", help="convert this llama2.c checkpoint instead")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if bool(a.size) == bool(a.from_llama2c):
        ap.error("give exactly one of --size / --from-llama2c")
    if a.from_llama2c:
        c, w = read_llama2c(a.from_llama2c)
    else:
        c = hf_config(SIZES[a.size])
        w = random_weights(c, a.seed)
    order = [n for n, _ in tensor_shapes(c)]
    for n, s in tensor_shapes(c):
        assert w[n].shape == tuple(s), (n, w[n].shape, s)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as fh:
        json.dump(c, fh, indent=2)
        fh.write("\n")
    write_safetensors(os.path.join(a.out, "model.safetensors"), w, order)
    total, matmul = count_params(c)
    print(json.dumps({"out": a.out, "size": a.size or "llama2c", "params": total, "matmul_params": matmul,
                      "config": c}))


if __name__ == "__main__":
    main()
