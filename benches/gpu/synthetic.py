#!/usr/bin/env python3
"""A GGUF of a realistic shape with random weights, for measuring speed where
no real model can travel (the lent GPU machine takes 64 MiB; SmolLM2 alone is
97 MB).

Decode and prefill speed depend on the shapes and the quantization of the
weights, not on their values, so the weights here are random Q4_K blocks
whose scales are set so that values stay small (a std of about 0.02, as a
trained model's) and nothing overflows into inf or NaN. The tokenizer is a
real one (SmolLM2's, 49152 tokens, with its chat template), so prompts,
templates and tokens behave as they do on a real model; the text generated is
noise.

    synthetic.py vocab SRC.gguf OUT.gguf          a tensor-less GGUF of SRC's tokenizer (~1.5 MB)
    synthetic.py model VOCAB.gguf OUT.gguf [--shape 1b|tiny]

Needs the `gguf` package (and numpy), nothing else.
"""

import argparse
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

# Shapes: "1b" is Llama 3.2 1B's (16 layers, 2048 wide, 32 heads of 64, 8 KV
# heads, 8192 feed-forward), on SmolLM2's vocabulary: 1.17 B parameters with
# an untied output, 0.66 GB in Q4_K. "tiny" rehearses the pipeline on a CPU.
SHAPES = {
    "1b": dict(layers=16, embd=2048, heads=32, kv_heads=8, ff=8192),
    "tiny": dict(layers=4, embd=512, heads=8, kv_heads=2, ff=1536),
}

# block_q4_K: f16 d, f16 dmin, 12 bytes of 6-bit sub-block scales and mins,
# 128 bytes of 4-bit quants, for 256 weights. A weight is
# d * scale * q - dmin * min, q in 0..15, scale and min in 0..63: with d and
# dmin in the ratio 1 : 7.5 the mean is about zero, and d sets the spread.
Q4_K_BLOCK_BYTES = 144
Q4_K_BLOCK_WEIGHTS = 256
D = np.float16(1.4e-4)
DMIN = np.float16(1.05e-3)


def tokenizer_fields(path):
    """The tokenizer's keys of a GGUF: (key, value, type, sub_type)."""
    reader = GGUFReader(path)
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
            yield key, field.contents(), field.types[0], sub


def q4_k(rng, rows, cols):
    """A rows x cols Q4_K tensor of random weights, as its raw bytes."""
    assert cols % Q4_K_BLOCK_WEIGHTS == 0, cols
    blocks = rows * cols // Q4_K_BLOCK_WEIGHTS
    raw = np.frombuffer(rng.bytes(blocks * Q4_K_BLOCK_BYTES), dtype=np.uint8).copy()
    raw = raw.reshape(blocks, Q4_K_BLOCK_BYTES)
    raw[:, 0:2] = np.array([D], dtype="<f2").view(np.uint8)
    raw[:, 2:4] = np.array([DMIN], dtype="<f2").view(np.uint8)
    return raw.reshape(rows, cols // Q4_K_BLOCK_WEIGHTS * Q4_K_BLOCK_BYTES)


def vocab(src, out):
    writer = GGUFWriter(out, "llama")
    for key, value, vtype, sub in tokenizer_fields(src):
        writer.add_key_value(key, value, vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def model(vocab_path, out, shape_name, seed):
    shape = SHAPES[shape_name]
    fields = list(tokenizer_fields(vocab_path))
    tokens = next(v for k, v, _, _ in fields if k == "tokenizer.ggml.tokens")
    n_vocab, embd, ff = len(tokens), shape["embd"], shape["ff"]
    head_dim = embd // shape["heads"]
    kv = head_dim * shape["kv_heads"]

    writer = GGUFWriter(out, "llama")
    writer.add_name(f"synthetic-{shape_name} (random weights, for speed only)")
    writer.add_context_length(8192)
    writer.add_embedding_length(embd)
    writer.add_block_count(shape["layers"])
    writer.add_feed_forward_length(ff)
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    # 14: "Q4_K - Small", the nearest of llama.cpp's labels for Q4_K
    # throughout (its Q4_K_M keeps the output and some attn_v/ffn_down in Q6_K).
    writer.add_file_type(14)
    writer.add_quantization_version(2)
    for key, value, vtype, sub in fields:
        writer.add_key_value(key, value, vtype, sub_type=sub)

    rng = np.random.default_rng(seed)
    ones = np.ones(embd, dtype=np.float32)

    def matrix(name, rows, cols):
        writer.add_tensor(name, q4_k(rng, rows, cols), raw_dtype=GGMLQuantizationType.Q4_K)

    # Each layer's matrices: (name, rows, columns), columns being the input width.
    layer = [
        ("attn_q", embd, embd),
        ("attn_k", kv, embd),
        ("attn_v", kv, embd),
        ("attn_output", embd, embd),
        ("ffn_gate", ff, embd),
        ("ffn_up", ff, embd),
        ("ffn_down", embd, ff),
    ]
    matrix("token_embd.weight", n_vocab, embd)
    for i in range(shape["layers"]):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        for name, rows, cols in layer:
            matrix(f"blk.{i}.{name}.weight", rows, cols)
    writer.add_tensor("output_norm.weight", ones)
    matrix("output.weight", n_vocab, embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    v = commands.add_parser("vocab", help="a tensor-less GGUF holding SRC's tokenizer")
    v.add_argument("src")
    v.add_argument("out")
    m = commands.add_parser("model", help="a random-weight llama GGUF on VOCAB's tokenizer")
    m.add_argument("vocab")
    m.add_argument("out")
    m.add_argument("--shape", choices=SHAPES, default="1b")
    m.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "vocab":
        vocab(args.src, args.out)
    else:
        model(args.vocab, args.out, args.shape, args.seed)
    print(f"synthetic.py: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
