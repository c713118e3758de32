#!/usr/bin/env python3
"""hf_config_reference.py - golden config.json files from Hugging Face
transformers, for mhub's config.json writer (src/hf.c).

Each file is what `model.save_pretrained(dir)` writes for a model of the
given config: transformers' PreTrainedModel.save_pretrained sets
config.dtype (the weights' dtype, "float32" for a model built in f32) and
config.architectures ([the model class's name]) and then calls
config.save_pretrained(dir). This script does the same two assignments on
the config alone, so torch is not needed.

Made with transformers 5.24.0 (the version mhub's writer names in
"transformers_version" for configs it makes itself). Run by hand, not in
CI:

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install transformers==5.24.0
    /tmp/hfvenv/bin/python tests/reference/hf_config_reference.py

writes tests/data/hf-config/<name>/config.json for every name below. The
"native" ones hold only settings mhub models, so mhub writes them byte for
byte from a config it builds itself (tests/test_hf.c builds the same
settings); "gpt2-extras" adds keys mhub does not model (nested objects,
non-ASCII strings, a big integer, floats whose shortest form is tricky),
for the read -> write round trip.

It also writes tests/data/hf-config/float-repr.txt: Python's repr of
every power of two a double holds (where the shortest digits are hardest
to get right: the gap below is half the gap above) and of random doubles,
one per line as "<C99 hex float> <repr>", for mhub's float printer.
"""
import math
import os
import random
import struct

import transformers
from transformers import GPT2Config, LlamaConfig, Qwen2Config

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "hf-config")

# name: (config class, architecture, dtype, settings)
CONFIGS = {
    "gpt2-default": (GPT2Config, "GPT2LMHeadModel", "float32", {}),
    "gpt2-untied": (GPT2Config, "GPT2LMHeadModel", "float32", dict(
        n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=64, n_inner=64,
        tie_word_embeddings=False, layer_norm_epsilon=1e-6, initializer_range=0.006)),
    "llama-default": (LlamaConfig, "LlamaForCausalLM", "float32", {}),
    "llama-gqa": (LlamaConfig, "LlamaForCausalLM", "bfloat16", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, max_position_embeddings=16, vocab_size=64)),
    "llama-bias": (LlamaConfig, "LlamaForCausalLM", "float32", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        head_dim=16, attention_bias=True, mlp_bias=True, initializer_range=0.01,
        rms_norm_eps=1.2345678901234567e-07, max_position_embeddings=16, vocab_size=64)),
    "qwen2-small": (Qwen2Config, "Qwen2ForCausalLM", "float32", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True,
        max_position_embeddings=16, vocab_size=64)),
    "qwen2-head-dim": (Qwen2Config, "Qwen2ForCausalLM", "float16", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=32, rms_norm_eps=3e-6,
        max_position_embeddings=32, vocab_size=100)),
    "gpt2-extras": (GPT2Config, "GPT2LMHeadModel", "float32", dict(
        n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=64,
        _name_or_path="some/où-model",
        task_specific_params={"text-generation": {"do_sample": True, "max_length": 50}},
        label="h\u00e9 \U0001d11e \x01 \u2028 \"q\" \\ / \t\x7f",
        big=2 ** 70, negative=-12, tiny=2.0 ** -1017, negative_zero=-0.0, e16=1e16,
        e15=1e15, third=1 / 3, small=1e-4, smaller=1e-5, nested={"b": [1, {}, [], None], "a": {}},
        empty_list=[], flags=[True, False])),
}


def float_reprs():
    values = [math.ldexp(1.0, k) for k in range(-1074, 1024)]
    rng = random.Random(20261128)
    while len(values) < 2098 + 200:
        v = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(v):
            values.append(v)
    values += [0.1, 1 / 3, 1e16, 1e15, 1e-4, 1e-5, 123456789012345678.0, 5e-324, -2.5, -0.0]
    with open(os.path.join(OUT, "float-repr.txt"), "w") as f:
        for v in values:
            f.write("%s %r\n" % (v.hex(), v))


def main():
    assert transformers.__version__ == "5.24.0", transformers.__version__
    for name, (cls, arch, dtype, settings) in CONFIGS.items():
        config = cls(**settings)
        config.dtype = dtype
        config.architectures = [arch]
        config.save_pretrained(os.path.join(OUT, name))
    float_reprs()


if __name__ == "__main__":
    main()
