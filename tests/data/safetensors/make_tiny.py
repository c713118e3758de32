#!/usr/bin/env python3
"""Make tiny.safetensors, the golden file for tests/test_safetensors.c.

Written by Hugging Face's own `safetensors` library, so the test checks
mhub's reader against a real file and mhub's writer against the bytes the
library writes for the same tensors (order, JSON, padding). Every value is
exact in its dtype, so no rounding choice can make the two differ.

    python3 -m venv --system-site-packages /tmp/stvenv   # torch for bf16
    /tmp/stvenv/bin/pip install safetensors
    /tmp/stvenv/bin/python make_tiny.py   # writes tiny.safetensors here

Made with safetensors 0.8.0 and torch 1.13. The C test builds the same
tensors from the formulas below; keep the two in step.
"""
import os

import torch
from safetensors.torch import save_file


def ramp(n, step, start, dtype):
    """start, start + step, ... (n values), exact in every dtype used."""
    return torch.tensor([start + step * i for i in range(n)], dtype=dtype)


tensors = {
    "wte.weight": ramp(12, 0.25, -1.25, torch.float32).reshape(4, 3),
    "ln_f.bias": ramp(3, 0.5, 0.5, torch.float32),
    "h.0.attn.c_attn.weight": ramp(6, 0.5, -1.0, torch.bfloat16).reshape(2, 3),
    "h.0.mlp.c_fc.bias": ramp(5, 0.125, -0.25, torch.float16),
    "scale": torch.tensor(2.5, dtype=torch.float32),
    "empty": torch.zeros((0, 4), dtype=torch.float16),
    "position_ids": torch.arange(4, dtype=torch.int64).reshape(1, 4),
}

here = os.path.dirname(os.path.abspath(__file__))
save_file(tensors, os.path.join(here, "tiny.safetensors"), metadata={"format": "pt"})
