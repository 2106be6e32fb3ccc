#!/usr/bin/env python3
"""Loads a directory exported by `llama_model::save_hf` with transformers and compares its float64
logits with a fixture's reference: `python3 scripts/check_export.py EXPORT_DIR FIXTURE_NAME`.
Make an export with `LLAMA_KEEP_EXPORT=/tmp/exp cargo test -p llama-model --test hf_parity export`."""

import os
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

export, name = sys.argv[1], sys.argv[2]
ref = load_file(os.path.join(os.path.dirname(__file__), "..", "llama-model", "tests", "fixtures", "hf", name, "reference.safetensors"))
model = LlamaForCausalLM.from_pretrained(export).double().eval()
with torch.no_grad():
    logits = model(input_ids=ref["tokens"]).logits
err = ((logits - ref["logits"]).abs().max() / ref["logits"].abs().max()).item()
print(f"{name}: transformers loads {export}; logits relative error vs the fixture {err:.2e}")
sys.exit(0 if err < 1e-6 else 1)
