#!/usr/bin/python3
"""torch_gpt.py - PyTorch peer for bench/bench_gpt: the same GPT training
step (forward, backward, AdamW) in float32 on the CPU.

Shapes as bench_gpt's: --shape 124m (GPT-2 small: 12 layers, 12 heads,
width 768, vocab 50257, tied) or small (6 layers, 8 heads, width 512,
vocab 256); pre-LayerNorm blocks, tanh GELU, learned positions, biases.
Prints one JSON object with the median ms/step over --steps timed steps
after one warmup step. Threads: --threads, applied through
torch.set_num_threads, with OMP_WAIT_POLICY=passive unless set (an
OpenMP pool spinning on 2 cores halves throughput).

Run with the Debian torch: /usr/bin/python3 bench/peers/torch_gpt.py --help
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class Block(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.fc1, self.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)
        self.heads = heads

    def forward(self, x):
        b, t, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(h, dim=2)
        q, k, v = (z.view(b, t, self.heads, h // self.heads).transpose(1, 2) for z in (q, k, v))
        s = (q @ k.transpose(-1, -2)) / (h // self.heads) ** 0.5
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, h, heads, vocab, seq):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, h), nn.Embedding(seq, h)
        self.blocks = nn.ModuleList(Block(h, heads) for _ in range(layers))
        self.lnf = nn.LayerNorm(h)

    def forward(self, tokens, targets):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        logits = self.lnf(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=["124m", "small"], default="124m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    big = a.shape == "124m"
    layers, h, heads, vocab = (12, 768, 12, 50257) if big else (6, 512, 8, 256)
    torch.manual_seed(0)
    model = GPT(layers, h, heads, vocab, a.seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, vocab, (a.batch, a.seq))
    targets = torch.randint(0, vocab, (a.batch, a.seq))
    times = []
    for s in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(tokens, targets).backward()
        opt.step()
        if s > 0:
            times.append(time.perf_counter() - t0)
    params = sum(q.numel() for q in model.parameters())
    ms = 1e3 * statistics.median(times)
    print(json.dumps({"peer": "torch", "version": torch.__version__, "shape": a.shape,
                      "params": params, "batch": a.batch, "seq": a.seq, "threads": a.threads,
                      "median_ms": round(ms, 2)}))


if __name__ == "__main__":
    main()
