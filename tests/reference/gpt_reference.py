#!/usr/bin/python3
"""gpt_reference.py - golden data for mhub's GPT forward and backward.

Builds two tiny decoder-only transformers in PyTorch, written out op by
op in float64 with mhub's parameter names and layouts (Megatron-Core's
names; linear_qkv rows grouped per query group: its query heads, then its
key head, then its value head):

  gpt2   LayerNorm, tanh GELU, learned positions, biases, tied output layer
  llama  RMSNorm, SwiGLU, rotary embeddings (rotate_half), grouped-query
         attention (4 heads, 2 groups), no biases, untied output layer

For each it records the config (an mhub_model.json object), the weights,
input tokens and targets, the logits, the mean next-token loss, every
parameter's gradient, and the parameters after 3 AdamW steps on the same
batch, into tests/data/gpt/golden.safetensors, written by hand per the
safetensors spec (8-byte little-endian header length, JSON header, data).

It also writes the same weights in Hugging Face's layout (names,
Conv1D transposes, q/k/v split or concatenated; converted here, apart
from mhub's C loader) with a config.json each, into
tests/data/gpt/hf-gpt2/ and tests/data/gpt/hf-llama/, and the gpt2
model's mean next-token loss on tests/data/gpt/eval-tokens.txt at
seq_len 8 (mhub eval's windows) into tests/data/gpt/eval-gpt2.json.

Run by hand, not in CI:  /usr/bin/python3 tests/reference/gpt_reference.py
(Debian's python3-torch). The output is deterministic for a given torch.
"""
import json
import math
import os
import struct

import torch

torch.manual_seed(1234)
DT = torch.float64

# eps 1e-5 rather than torch's 1e-8: some gradients are zero in exact
# arithmetic (the key bias: softmax ignores a constant added to every
# score of a row) and only rounding noise in float32, ~1e-10. AdamW moves
# such a parameter by lr * g / (|g| + eps), which for eps 1e-8 turns the
# noise into steps of up to lr, different in float32 and float64.

ADAMW = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-5, "weight_decay": 0.1, "steps": 3}

CONFIGS = {
    "gpt2": {
        "provider": "gpt", "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
        "ffn_hidden_size": 64, "seq_length": 16, "vocab_size": 64,
        "normalization": "LayerNorm", "activation": "gelu",
        "position_embedding_type": "learned_absolute", "layernorm_epsilon": 1e-5,
        "share_embeddings_and_output_weights": True, "add_bias_linear": True,
        "add_qkv_bias": True,
    },
    "llama": {
        "provider": "gpt", "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
        "num_query_groups": 2, "ffn_hidden_size": 48, "seq_length": 16, "vocab_size": 64,
        "normalization": "RMSNorm", "activation": "swiglu", "position_embedding_type": "rope",
        "rotary_base": 10000.0, "layernorm_epsilon": 1e-6,
        "share_embeddings_and_output_weights": False, "add_bias_linear": False,
        "add_qkv_bias": False,
    },
}
BATCH, SEQ = 2, 8


def param_shapes(c):
    """mhub's parameter list for a whole model (gpt.h), in order."""
    h, a = c["hidden_size"], c["num_attention_heads"]
    g = c.get("num_query_groups") or a
    d = h // a
    f = c["ffn_hidden_size"]
    f1 = 2 * f if c["activation"] == "swiglu" else f
    ln = c["normalization"] == "LayerNorm"
    bias = c["add_bias_linear"]
    qkv_bias = bias or c["add_qkv_bias"]
    out = [("embedding.word_embeddings.weight", (c["vocab_size"], h))]
    if c["position_embedding_type"] == "learned_absolute":
        out.append(("embedding.position_embeddings.weight", (c["seq_length"], h)))
    for i in range(c["num_layers"]):
        p = "decoder.layers.%d." % i
        out.append((p + "self_attention.linear_qkv.layer_norm_weight", (h,)))
        if ln:
            out.append((p + "self_attention.linear_qkv.layer_norm_bias", (h,)))
        out.append((p + "self_attention.linear_qkv.weight", ((a + 2 * g) * d, h)))
        if qkv_bias:
            out.append((p + "self_attention.linear_qkv.bias", ((a + 2 * g) * d,)))
        out.append((p + "self_attention.linear_proj.weight", (h, a * d)))
        if bias:
            out.append((p + "self_attention.linear_proj.bias", (h,)))
        out.append((p + "mlp.linear_fc1.layer_norm_weight", (h,)))
        if ln:
            out.append((p + "mlp.linear_fc1.layer_norm_bias", (h,)))
        out.append((p + "mlp.linear_fc1.weight", (f1, h)))
        if bias:
            out.append((p + "mlp.linear_fc1.bias", (f1,)))
        out.append((p + "mlp.linear_fc2.weight", (h, f)))
        if bias:
            out.append((p + "mlp.linear_fc2.bias", (h,)))
    out.append(("decoder.final_layernorm.weight", (h,)))
    if ln:
        out.append(("decoder.final_layernorm.bias", (h,)))
    if not c["share_embeddings_and_output_weights"]:
        out.append(("output_layer.weight", (c["vocab_size"], h)))
    return out


def init_params(c):
    """Random values that exercise every term: norm weights away from 1,
    biases away from 0. Rounded to float32, the precision mhub stores."""
    params = {}
    for name, shape in param_shapes(c):
        if name.endswith("layer_norm_weight") or name.endswith("final_layernorm.weight"):
            t = 1.0 + 0.2 * torch.randn(shape)
        elif len(shape) == 1:
            t = 0.05 * torch.randn(shape)
        else:
            t = 0.15 * torch.randn(shape)
        params[name] = t.float().to(DT).requires_grad_(True)
    return params


def norm(c, x, w, b):
    eps = c["layernorm_epsilon"]
    if c["normalization"] == "LayerNorm":
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * w + b
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(c, x, seq):
    """Hugging Face Llama's rotate_half rotation of x [B, heads, T, d]."""
    d = x.shape[-1]
    inv = torch.tensor([c["rotary_base"] ** (-2.0 * i / d) for i in range(d // 2)], dtype=DT)
    ang = torch.arange(seq, dtype=DT)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def forward(c, P, tokens, targets):
    h, a = c["hidden_size"], c["num_attention_heads"]
    g = c.get("num_query_groups") or a
    d = h // a
    f = c["ffn_hidden_size"]
    ln = c["normalization"] == "LayerNorm"
    B, T = tokens.shape
    x = P["embedding.word_embeddings.weight"][tokens]
    if c["position_embedding_type"] == "learned_absolute":
        x = x + P["embedding.position_embeddings.weight"][torch.arange(T)][None]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(c["num_layers"]):
        p = "decoder.layers.%d." % i
        get = lambda n: P.get(p + n)
        hh = norm(c, x, get("self_attention.linear_qkv.layer_norm_weight"),
                  get("self_attention.linear_qkv.layer_norm_bias") if ln else None)
        qkv = hh @ get("self_attention.linear_qkv.weight").T
        if get("self_attention.linear_qkv.bias") is not None:
            qkv = qkv + get("self_attention.linear_qkv.bias")
        # per group: a/g query heads, a key head, a value head
        qkv = qkv.view(B, T, g, a // g + 2, d)
        q = qkv[:, :, :, : a // g].reshape(B, T, a, d).transpose(1, 2)
        k = qkv[:, :, :, a // g].transpose(1, 2)          # [B, g, T, d]
        v = qkv[:, :, :, a // g + 1].transpose(1, 2)
        if c["position_embedding_type"] == "rope":
            q, k = rope(c, q, T), rope(c, k, T)
        k = k.repeat_interleave(a // g, dim=1)
        v = v.repeat_interleave(a // g, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        s = s.masked_fill(~mask, float("-inf"))
        y = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, a * d)
        y = y @ get("self_attention.linear_proj.weight").T
        if get("self_attention.linear_proj.bias") is not None:
            y = y + get("self_attention.linear_proj.bias")
        x = x + y
        hh = norm(c, x, get("mlp.linear_fc1.layer_norm_weight"),
                  get("mlp.linear_fc1.layer_norm_bias") if ln else None)
        u = hh @ get("mlp.linear_fc1.weight").T
        if get("mlp.linear_fc1.bias") is not None:
            u = u + get("mlp.linear_fc1.bias")
        if c["activation"] == "swiglu":
            u = torch.nn.functional.silu(u[..., :f]) * u[..., f:]
        else:
            u = torch.nn.functional.gelu(u, approximate="tanh")
        u = u @ get("mlp.linear_fc2.weight").T
        if get("mlp.linear_fc2.bias") is not None:
            u = u + get("mlp.linear_fc2.bias")
        x = x + u
    x = norm(c, x, P["decoder.final_layernorm.weight"],
             P.get("decoder.final_layernorm.bias"))
    out = P.get("output_layer.weight", P["embedding.word_embeddings.weight"])
    logits = x @ out.T
    loss = torch.nn.functional.cross_entropy(logits.view(B * T, -1), targets.view(-1))
    return logits.view(B * T, -1), loss


def run(name, c):
    P = init_params(c)
    tokens = torch.randint(0, c["vocab_size"], (BATCH, SEQ))
    targets = torch.randint(0, c["vocab_size"], (BATCH, SEQ))
    logits, loss = forward(c, P, tokens, targets)
    loss.backward()
    out = {}
    for n, t in P.items():
        out["%s/param/%s" % (name, n)] = t.detach().float()
        out["%s/grad/%s" % (name, n)] = t.grad.float()
    out[name + "/tokens"] = tokens.reshape(-1).int()
    out[name + "/targets"] = targets.reshape(-1).int()
    out[name + "/logits"] = logits.detach().float()
    out[name + "/loss"] = loss.detach().float().reshape(1)
    # AdamW on the same batch, from the same starting point
    Q = {n: t.detach().clone().requires_grad_(True) for n, t in P.items()}
    opt = torch.optim.AdamW(Q.values(), lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]),
                            eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
    for _ in range(ADAMW["steps"]):
        opt.zero_grad()
        forward(c, Q, tokens, targets)[1].backward()
        opt.step()
    for n, t in Q.items():
        out["%s/step%d/%s" % (name, ADAMW["steps"], n)] = t.detach().float()
    return out


def write_safetensors(path, tensors, metadata):
    """The format by hand: header length (u64 LE), JSON header, data."""
    kinds = {torch.float32: "F32", torch.int32: "I32"}
    header, blobs, offset = {}, [], 0
    for n in sorted(tensors):
        t = tensors[n].contiguous()
        raw = t.numpy().tobytes()
        header[n] = {"dtype": kinds[t.dtype], "shape": list(t.shape),
                     "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - (len(text) + 8) % 8) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


# ---- Hugging Face layout ----------------------------------------------------
# The same weights under Hugging Face's names and layouts, converted here
# independently of mhub's C loader (hf_weights.c), so the C test checks
# the loader against a second implementation of the mapping.


def split_qkv(c, w):
    """mhub's grouped linear_qkv rows (per group: its a/g query heads,
    its key head, its value head) -> (q, k, v) rows in head order."""
    a = c["num_attention_heads"]
    g = c.get("num_query_groups") or a
    d = c["hidden_size"] // a
    grouped = w.reshape((g, a // g + 2, d) + tuple(w.shape[1:]))
    q = grouped[:, : a // g].reshape((a * d,) + tuple(w.shape[1:]))
    k = grouped[:, a // g].reshape((g * d,) + tuple(w.shape[1:]))
    v = grouped[:, a // g + 1].reshape((g * d,) + tuple(w.shape[1:]))
    return q, k, v


def hf_gpt2(c, P):
    """GPT2LMHeadModel's state dict: Conv1D weights stored [in, out]."""
    out = {"transformer.wte.weight": P["embedding.word_embeddings.weight"],
           "transformer.wpe.weight": P["embedding.position_embeddings.weight"],
           "transformer.ln_f.weight": P["decoder.final_layernorm.weight"],
           "transformer.ln_f.bias": P["decoder.final_layernorm.bias"]}
    for i in range(c["num_layers"]):
        m, h = "decoder.layers.%d." % i, "transformer.h.%d." % i
        q, k, v = split_qkv(c, P[m + "self_attention.linear_qkv.weight"])
        qb, kb, vb = split_qkv(c, P[m + "self_attention.linear_qkv.bias"])
        out.update({
            h + "ln_1.weight": P[m + "self_attention.linear_qkv.layer_norm_weight"],
            h + "ln_1.bias": P[m + "self_attention.linear_qkv.layer_norm_bias"],
            h + "attn.c_attn.weight": torch.cat([q, k, v], 0).T,
            h + "attn.c_attn.bias": torch.cat([qb, kb, vb], 0),
            h + "attn.c_proj.weight": P[m + "self_attention.linear_proj.weight"].T,
            h + "attn.c_proj.bias": P[m + "self_attention.linear_proj.bias"],
            h + "ln_2.weight": P[m + "mlp.linear_fc1.layer_norm_weight"],
            h + "ln_2.bias": P[m + "mlp.linear_fc1.layer_norm_bias"],
            h + "mlp.c_fc.weight": P[m + "mlp.linear_fc1.weight"].T,
            h + "mlp.c_fc.bias": P[m + "mlp.linear_fc1.bias"],
            h + "mlp.c_proj.weight": P[m + "mlp.linear_fc2.weight"].T,
            h + "mlp.c_proj.bias": P[m + "mlp.linear_fc2.bias"],
        })
    return out


def hf_llama(c, P):
    """LlamaForCausalLM's state dict (nn.Linear, [out, in]). No q/k row
    permutation: the reference's rope is Hugging Face's rotate_half."""
    f = c["ffn_hidden_size"]
    out = {"model.embed_tokens.weight": P["embedding.word_embeddings.weight"],
           "model.norm.weight": P["decoder.final_layernorm.weight"],
           "lm_head.weight": P["output_layer.weight"]}
    for i in range(c["num_layers"]):
        m, h = "decoder.layers.%d." % i, "model.layers.%d." % i
        q, k, v = split_qkv(c, P[m + "self_attention.linear_qkv.weight"])
        fc1 = P[m + "mlp.linear_fc1.weight"]
        out.update({
            h + "input_layernorm.weight": P[m + "self_attention.linear_qkv.layer_norm_weight"],
            h + "self_attn.q_proj.weight": q,
            h + "self_attn.k_proj.weight": k,
            h + "self_attn.v_proj.weight": v,
            h + "self_attn.o_proj.weight": P[m + "self_attention.linear_proj.weight"],
            h + "post_attention_layernorm.weight": P[m + "mlp.linear_fc1.layer_norm_weight"],
            h + "mlp.gate_proj.weight": fc1[:f],
            h + "mlp.up_proj.weight": fc1[f:],
            h + "mlp.down_proj.weight": P[m + "mlp.linear_fc2.weight"],
        })
    return out


def hf_config(name, c):
    if name == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "n_embd": c["hidden_size"], "n_layer": c["num_layers"],
                "n_head": c["num_attention_heads"], "n_inner": c["ffn_hidden_size"],
                "n_positions": c["seq_length"], "vocab_size": c["vocab_size"],
                "layer_norm_epsilon": c["layernorm_epsilon"],
                "activation_function": "gelu_new", "tie_word_embeddings": True,
                "torch_dtype": "float32"}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": c["hidden_size"], "intermediate_size": c["ffn_hidden_size"],
            "num_hidden_layers": c["num_layers"],
            "num_attention_heads": c["num_attention_heads"],
            "num_key_value_heads": c["num_query_groups"],
            "max_position_embeddings": c["seq_length"], "vocab_size": c["vocab_size"],
            "rms_norm_eps": c["layernorm_epsilon"], "rope_theta": c["rotary_base"],
            "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
            "mlp_bias": False, "torch_dtype": "float32"}


def write_hf(root, name, c, P):
    conv = hf_gpt2 if name == "gpt2" else hf_llama
    tensors = {n: t.detach().float() for n, t in conv(c, P).items()}
    d = os.path.join(root, "hf-" + name)
    write_safetensors(os.path.join(d, "model.safetensors"), tensors, {"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config(name, c), f, indent=2, sort_keys=True)
        f.write("\n")


# ---- eval: the mean next-token loss of the gpt2 model on a token file ------
# Bytes 48..63 ('0'..'?') are all below the golden vocabulary of 64.
EVAL_TEXT = b"0123456789:;<=>?" * 3 + b"31415926535897932384626433832795028841971693993751"
EVAL_SEQ = 8


def eval_loss(c, P, data, seq):
    """Windows i = tokens [i T, i T + T]: the mean over every target."""
    ids = torch.tensor(list(data), dtype=torch.long)
    n = (len(ids) - 1) // seq
    inputs = torch.stack([ids[i * seq: i * seq + seq] for i in range(n)])
    targets = torch.stack([ids[i * seq + 1: i * seq + seq + 1] for i in range(n)])
    with torch.no_grad():
        return forward(c, P, inputs, targets)[1].item(), n * seq, n


def main():
    tensors, meta = {}, {"adamw": json.dumps(ADAMW), "batch": str(BATCH), "seq": str(SEQ),
                         "torch": torch.__version__}
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                         "data", "gpt"))
    params = {}
    for name, c in CONFIGS.items():
        rng = torch.get_rng_state()
        P = init_params(c)
        torch.set_rng_state(rng)  # run() draws the same weights again
        params[name] = P
        tensors.update(run(name, c))
        meta[name + "/config"] = json.dumps(c)
    path = os.path.join(root, "golden.safetensors")
    write_safetensors(path, tensors, meta)
    print("wrote %s (%d tensors, %d bytes)" % (path, len(tensors), os.path.getsize(path)))
    for name, c in CONFIGS.items():
        write_hf(root, name, c, params[name])
    with open(os.path.join(root, "eval-tokens.txt"), "wb") as f:
        f.write(EVAL_TEXT)
    loss, tokens, windows = eval_loss(CONFIGS["gpt2"], params["gpt2"], EVAL_TEXT, EVAL_SEQ)
    with open(os.path.join(root, "eval-gpt2.json"), "w") as f:
        json.dump({"model": "hf-gpt2", "data": "eval-tokens.txt", "seq_len": EVAL_SEQ,
                   "loss": loss, "tokens": tokens, "windows": windows}, f, indent=2)
        f.write("\n")
    print("wrote the Hugging Face models and the eval loss %.9f" % loss)


if __name__ == "__main__":
    main()
