#!/usr/bin/env python3
"""Writes the Hugging Face parity fixtures under llama-model/tests/fixtures/hf/.

Run by hand (not in CI) after `pip install torch transformers safetensors numpy`:

    python3 scripts/make_reference.py

For each config it builds a random-weight `LlamaForCausalLM` with Hugging Face transformers, perturbs
the norm weights away from 1, saves the checkpoint as transformers does (`save_pretrained`, f32
safetensors; one config sharded), and writes `reference.safetensors` with float64 outputs of the same
weights: `tokens` [2, T] (int64), `logits` [2, T, V], `loss` (mean next-token cross-entropy over
tokens[:, 1:]) and `grad.<hf name>` for every parameter.
"""

import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "llama-model", "tests", "fixtures", "hf")

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
             max_position_embeddings=64)
# Weights stored in half precision: the reference uses the rounded weights.
HALF = {"bf16-gqa": torch.bfloat16, "f16-gqa": torch.float16}

CONFIGS = {
    # name: (config kwargs, write a transformers-4 style config.json, shard the weights)
    "mha-untied": (dict(vocab_size=96, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0,
                        rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=64), False, False),
    "gqa-tied": (dict(vocab_size=80, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, rope_theta=500000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=64), True, False),
    "gqa-sharded": (dict(vocab_size=64, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=128), False, True),
    # New fixtures go last: seeds follow this order, so earlier fixtures keep their bytes.
    "bf16-gqa": (SMALL, False, False),
    "f16-gqa": (SMALL, False, False),
}


def build(name, kwargs, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(**kwargs, attention_bias=False, mlp_bias=False, hidden_act="silu")
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


META = {"mha-untied": 1, "gqa-sharded": 2}  # Meta twins and their model-parallel ranks


def write_meta(name, model, kwargs, ranks):
    """Writes the same weights in Meta's layout: params.json + consolidated.NN.pth, q/k rows permuted
    back to interleaved RoPE pairs, tensors split across `ranks` model-parallel files."""
    d = os.path.join(OUT, "..", "meta", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    dim, nh, nkv = kwargs["hidden_size"], kwargs["num_attention_heads"], kwargs["num_key_value_heads"]
    hd = dim // nh

    def unpermute(w, heads):  # inverse of convert_llama_weights_to_hf.permute
        return w.view(heads, 2, hd // 2, dim).transpose(1, 2).reshape(heads * hd, dim)

    meta = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
            "output.weight": sd["lm_head.weight"], "rope.freqs": torch.zeros(hd // 2)}
    for i in range(kwargs["num_hidden_layers"]):
        p = f"model.layers.{i}."
        meta[f"layers.{i}.attention.wq.weight"] = unpermute(sd[p + "self_attn.q_proj.weight"], nh)
        meta[f"layers.{i}.attention.wk.weight"] = unpermute(sd[p + "self_attn.k_proj.weight"], nkv)
        meta[f"layers.{i}.attention.wv.weight"] = sd[p + "self_attn.v_proj.weight"]
        meta[f"layers.{i}.attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        meta[f"layers.{i}.feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        meta[f"layers.{i}.feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        meta[f"layers.{i}.feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        meta[f"layers.{i}.attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        meta[f"layers.{i}.ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    row_parallel = ("wo.weight", "w2.weight", "tok_embeddings.weight")
    for r in range(ranks):
        shard = {}
        for k, v in meta.items():
            if ranks == 1 or k.endswith("norm.weight") or k == "rope.freqs":
                shard[k] = v.clone()
            else:
                axis = 1 if k.endswith(row_parallel) else 0
                shard[k] = v.chunk(ranks, dim=axis)[r].clone()
        torch.save(shard, os.path.join(d, f"consolidated.{r:02d}.pth"))
    params = {"dim": dim, "multiple_of": 256, "n_heads": nh, "n_layers": kwargs["num_hidden_layers"],
              "norm_eps": kwargs["rms_norm_eps"], "vocab_size": -1, "rope_theta": kwargs["rope_theta"]}
    if nkv != nh:
        params["n_kv_heads"] = nkv
    with open(os.path.join(d, "params.json"), "w") as f:
        json.dump(params, f)


def main():
    print("transformers", transformers.__version__, "torch", torch.__version__)
    for seed, (name, (kwargs, v4_style, sharded)) in enumerate(CONFIGS.items()):
        d = os.path.join(OUT, name)
        shutil.rmtree(d, ignore_errors=True)
        model = build(name, kwargs, seed)
        if name in HALF:
            model = model.to(HALF[name])
        model.save_pretrained(d, safe_serialization=True, max_shard_size="20KB" if sharded else "1GB")
        if v4_style:
            # Rewrite config.json the way transformers 4 wrote it.
            path = os.path.join(d, "config.json")
            with open(path) as f:
                c = json.load(f)
            rp = c.pop("rope_parameters", None) or {}
            c["rope_theta"] = rp.get("rope_theta", kwargs["rope_theta"])
            c["rope_scaling"] = None
            c["torch_dtype"] = c.pop("dtype", "float32")
            with open(path, "w") as f:
                json.dump(c, f, indent=2)
        if name in META:
            write_meta(name, model, kwargs, META[name])
        if name in HALF:
            # Reload from disk: `.to(half)` also rounded the rotary inv_freq buffer, which
            # from_pretrained recomputes; the weights are the rounded ones on disk.
            ref = LlamaForCausalLM.from_pretrained(d, dtype=torch.float64)
        else:
            ref = model.double()
        g = torch.Generator().manual_seed(100 + seed)
        tokens = torch.randint(0, kwargs["vocab_size"], (2, 12), generator=g)
        out = ref(input_ids=tokens, labels=tokens)
        # transformers computes its loss after casting logits to float32; recompute it in float64.
        v = kwargs["vocab_size"]
        loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1))
        assert abs(loss.item() - out.loss.item()) < 1e-5 * loss.item(), (loss.item(), out.loss.item())
        out.loss = loss
        loss.backward()
        tensors = {"tokens": tokens.to(torch.int64), "logits": out.logits.detach(), "loss": out.loss.detach().reshape(1)}
        for n, p in ref.named_parameters():
            tensors["grad." + n] = p.grad.detach().contiguous()
        save_file(tensors, os.path.join(d, "reference.safetensors"))
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"{name}: {sum(p.numel() for p in ref.parameters())} params, loss {out.loss.item():.6f}, {size} bytes")


def write_evil():
    """A Meta-layout checkpoint whose pickle would run a shell command if unpickled naively."""

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/llama-pwned-by-pickle",))

    d = os.path.join(OUT, "..", "meta", "evil")
    os.makedirs(d, exist_ok=True)
    torch.save({"tok_embeddings.weight": torch.zeros(4, 4), "payload": Evil()}, os.path.join(d, "consolidated.00.pth"))
    with open(os.path.join(d, "params.json"), "w") as f:
        json.dump({"dim": 4, "n_heads": 1, "n_layers": 1, "multiple_of": 4, "norm_eps": 1e-6, "vocab_size": -1}, f)


if __name__ == "__main__":
    write_evil()
    main()
