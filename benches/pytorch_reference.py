#!/usr/bin/env python3
"""The PyTorch side of `llama bench`: the same LLaMA, the same step, the same JSON.

    llama params --preset 125m --model-json > 125m.json
    python3 benches/pytorch_reference.py --model-json 125m.json --mode train --batch 8 --seq 2048 \
        --dtype bf16 --device cuda [--compile] [--peak-flops 989e12]

The model is written here in plain PyTorch from our config (pre-RMSNorm, SwiGLU with the config's
hidden size, rotary embeddings in the half-split layout, grouped-query attention through
`F.scaled_dot_product_attention`, no biases, tied or untied output), so both sides run the same
architecture with the same parameter count (checked against the config's `params`). The steps:

- train: forward, cross-entropy in f32, backward, `clip_grad_norm_(1.0)`, AdamW (β 0.9/0.95,
  ε 1e-8, decay 0.1 on the linear weights only, as `llama train`);
- prefill: a forward pass under `torch.no_grad()`;
- decode: one token per row against a KV cache filled by a `seq`-token prompt.

`--dtype bf16` is autocast to bfloat16 over f32 parameters and optimiser state (what `llama`'s
bf16 does by hand). `--compile` wraps the model in `torch.compile`. Every timed step ends with a
device synchronisation; warm-up steps are not timed; the median is reported.
"""

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim, max_len, theta, device):
    inv = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    ang = torch.arange(max_len, dtype=torch.float64, device=device)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h, kv, hid = c["dim"], c["n_heads"], c["kv_heads"], c["ffn_hidden"]
        self.h, self.kv, self.hd = h, kv, d // h
        self.attention_norm = RMSNorm(d, c["norm_eps"])
        self.wq = nn.Linear(d, h * self.hd, bias=False)
        self.wk = nn.Linear(d, kv * self.hd, bias=False)
        self.wv = nn.Linear(d, kv * self.hd, bias=False)
        self.wo = nn.Linear(h * self.hd, d, bias=False)
        self.ffn_norm = RMSNorm(d, c["norm_eps"])
        self.w1 = nn.Linear(d, hid, bias=False)
        self.w3 = nn.Linear(d, hid, bias=False)
        self.w2 = nn.Linear(hid, d, bias=False)

    def forward(self, x, cos, sin, cache=None, start=0):
        b, t, _ = x.shape
        a = self.attention_norm(x)
        q = self.wq(a).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.wk(a).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.wv(a).view(b, t, self.kv, self.hd).transpose(1, 2)
        q, k = rotate(q, cos[start:start + t], sin[start:start + t]), rotate(k, cos[start:start + t], sin[start:start + t])
        if cache is not None:
            cache["k"][:, :, start:start + t] = k
            cache["v"][:, :, start:start + t] = v
            k, v = cache["k"][:, :, :start + t], cache["v"][:, :, :start + t]
        rep = self.h // self.kv
        if rep > 1:
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None or t > 1)
        x = x + self.wo(o.transpose(1, 2).reshape(b, t, -1))
        f = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(f)) * self.w3(f))


class Llama(nn.Module):
    def __init__(self, c, device):
        super().__init__()
        for key, want in (("norm", "rms-norm"), ("norm_placement", "pre"), ("ffn", "swiglu"), ("position", "rope")):
            if c[key] != want:
                raise SystemExit(f"the reference implements LLaMA only: {key} = {c[key]!r}, not {want!r}")
        self.tok_embeddings = nn.Embedding(c["vocab_size"], c["dim"])
        self.layers = nn.ModuleList([Block(c) for _ in range(c["n_layers"])])
        self.norm = RMSNorm(c["dim"], c["norm_eps"])
        self.output = None if c["tie_embeddings"] else nn.Linear(c["dim"], c["vocab_size"], bias=False)
        cos, sin = rope_tables(c["dim"] // c["n_heads"], c["max_seq_len"], c["rope_theta"], device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens, caches=None, start=0):
        x = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.cos, self.sin, None if caches is None else caches[i], start)
        x = self.norm(x)
        return self.output(x) if self.output is not None else x @ self.tok_embeddings.weight.t()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-json", required=True, help="`llama params --preset NAME --model-json` output")
    ap.add_argument("--mode", choices=["train", "prefill", "decode"], default="train")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--peak-flops", type=float)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with open(a.model_json) as f:
        c = json.load(f)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = Llama(c, dev).to(dev)
    params = sum(p.numel() for p in model.parameters())
    if params != c["params"]:
        raise SystemExit(f"parameter count {params} differs from the config's {c['params']}")
    run = torch.compile(model) if a.compile else model
    b, t, vocab = a.batch, a.seq, c["vocab_size"]
    if t > c["max_seq_len"]:
        raise SystemExit(f"seq {t} exceeds max_seq_len {c['max_seq_len']}")
    if a.mode == "decode" and t + a.warmup + a.iters > c["max_seq_len"]:
        raise SystemExit(f"decode needs room for {a.warmup + a.iters} tokens after a {t}-token prompt")
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rand = lambda n: torch.randint(0, vocab, (b, n), generator=gen).to(dev)

    if a.mode == "train":
        decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "tok_embeddings" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "tok_embeddings" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                lr=3e-4, betas=(0.9, 0.95), eps=1e-8)

        def step():
            tokens = rand(t + 1)
            with amp:
                logits = run(tokens[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, vocab), tokens[:, 1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        tokens_per_step = b * t
    elif a.mode == "prefill":
        @torch.no_grad()
        def step():
            with amp:
                run(rand(t))
        tokens_per_step = b * t
    else:
        kv, hd = c["kv_heads"], c["dim"] // c["n_heads"]
        total = t + a.warmup + a.iters
        cache_dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
        caches = [{"k": torch.zeros(b, kv, total, hd, device=dev, dtype=cache_dtype),
                   "v": torch.zeros(b, kv, total, hd, device=dev, dtype=cache_dtype)} for _ in model.layers]
        with torch.no_grad(), amp:
            model(rand(t), caches, 0)
        pos = [t]

        @torch.no_grad()
        def step():
            with amp:
                model(rand(1), caches, pos[0])
            pos[0] += 1
        tokens_per_step = b

    for _ in range(a.warmup):
        step()
        sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.iters):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    # The same FLOP count as `llama bench`: 6·(N + V·d) + 12·L·d·T per trained token, a third
    # of it per forward token.
    n_non_emb = c["params"] - vocab * c["dim"] * (1 if c["tie_embeddings"] else 2)
    train_flops = 6 * (n_non_emb + vocab * c["dim"]) + 12 * c["n_layers"] * c["dim"] * t
    per_token = train_flops if a.mode == "train" else train_flops / 3
    tps = tokens_per_step / median
    print(json.dumps({
        "model": a.model_json, "params": params, "mode": a.mode,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "precision": a.dtype, "batch": b, "seq": t, "median_step_s": median, "steps_timed": a.iters,
        "tokens_per_s": tps, "mfu": tps * per_token / a.peak_flops if a.peak_flops else None,
        "peak_flops": a.peak_flops,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_device_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
        "impl": "pytorch-compile" if a.compile else "pytorch-eager", "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
