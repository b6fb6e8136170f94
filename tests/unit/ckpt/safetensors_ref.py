#!/usr/bin/python3
"""An independent safetensors writer and checker for tests/unit/ckpt/test_safetensors.cpp.

Works on the bytes by hand (struct + json + torch), without the safetensors package, so our C++
reader and writer are checked against a second implementation of the format.

  safetensors_ref.py write PATH [--unpadded]   writes the reference tensors (data in reverse order)
  safetensors_ref.py check PATH                checks a file written by dsk's save_safetensors
Exit status 0 and "OK" on stdout when all is well; otherwise the first problem on stderr.
"""
import json
import struct
import sys

import torch

# name, safetensors dtype, torch dtype, shape — test_safetensors.cpp holds the same list.
SPECS = [
    ("f64", "F64", torch.float64, [2, 3]),
    ("f32", "F32", torch.float32, [4, 5]),
    ("f16", "F16", torch.float16, [3, 7]),
    ("bf16", "BF16", torch.bfloat16, [5, 3]),
    ("i64", "I64", torch.int64, [6]),
    ("i32", "I32", torch.int32, [2, 2, 2]),
    ("i16", "I16", torch.int16, [9]),
    ("i8", "I8", torch.int8, [3, 3]),
    ("u8", "U8", torch.uint8, [10]),
    ("bool", "BOOL", torch.bool, [7]),
    ("scalar", "F32", torch.float32, []),
    ("empty", "BF16", torch.bfloat16, [0, 4]),
]
METADATA = {"format": "pt", "writer": "python"}


def reference(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    k = torch.arange(n, dtype=torch.float64).reshape(shape)
    if dtype == torch.bool:
        return (k.to(torch.int64) % 3) == 0
    if dtype.is_floating_point:
        return (k * 0.1 - 3.0).to(dtype)
    if dtype == torch.uint8:
        return (k.to(torch.int64) * 7 % 256).to(dtype)
    return (k.to(torch.int64) - 5).to(dtype)


def to_bytes(t):
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.contiguous().numpy().tobytes()


def write(path, padded):
    header = {"__metadata__": METADATA}
    blobs = []
    offset = 0
    for name, st_dtype, dtype, shape in reversed(SPECS):  # data order differs from SPECS order
        b = to_bytes(reference(dtype, shape))
        header[name] = {"dtype": st_dtype, "shape": shape, "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    text = json.dumps(header).encode("utf-8")
    if padded:
        text += b" " * ((8 - len(text) % 8) % 8)
    elif len(text) % 2 == 0:
        text += b" "  # odd length: every tensor starts unaligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def check(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    if n % 8 != 0:
        return f"header length {n} is not a multiple of 8"
    text = raw[8:8 + n]
    body = text.rstrip(b" ")
    if not body.endswith(b"}") or len(text) - len(body) >= 8:
        return "header is not JSON followed by at most 7 spaces"
    header = json.loads(text)
    data = raw[8 + n:]
    if header.get("__metadata__") != {"format": "pt", "writer": "dsk"}:
        return f"metadata is {header.get('__metadata__')}"
    offset = 0
    for name, st_dtype, dtype, shape in SPECS:
        e = header.get(name)
        if e is None:
            return f"tensor {name} missing"
        if e["dtype"] != st_dtype or e["shape"] != shape:
            return f"tensor {name}: dtype/shape {e['dtype']} {e['shape']}, expected {st_dtype} {shape}"
        begin, end = e["data_offsets"]
        if begin != offset:
            return f"tensor {name} starts at {begin}, expected {offset} (data in the order given)"
        want = reference(dtype, shape)
        if end - begin != len(to_bytes(want)):
            return f"tensor {name} has {end - begin} bytes"
        if want.numel() > 0:
            got = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(shape)
            if not torch.equal(got, want):
                return f"tensor {name} values differ: {got} vs {want}"
        offset = end
    if offset != len(data):
        return f"data section has {len(data)} bytes, tensors cover {offset}"
    if len(header) != len(SPECS) + 1:
        return f"header has {len(header)} entries"
    return None


def main():
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "write":
        write(path, padded="--unpadded" not in sys.argv[3:])
    else:
        problem = check(path)
        if problem:
            print(problem, file=sys.stderr)
            sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
