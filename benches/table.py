#!/usr/bin/env python3
"""Markdown table of one or more `benches/gpu_compare.sh` results files.

    python3 benches/table.py results.jsonl [more.jsonl ...]

One row per (model, mode, batch, seq, implementation): median step, tokens/s, MFU, the card's peak
memory during the job, the first (cold) step, and the ratio to PyTorch eager and to torch.compile
measured in the same files.
"""

import json
import sys


def main():
    rows = []
    for path in sys.argv[1:]:
        for line in open(path):
            j = json.loads(line)
            if "result" not in j:
                impl, preset, mode, batch = j["job"].split(":")
                rows.append({"impl": impl, "model": preset, "mode": mode, "batch": int(batch), "error": j["error"]})
                continue
            r = j["result"]
            impl = r.get("impl") or r["device"].split(" ")[0].split(":")[0]
            if impl == "tch-cuda":
                impl = "burn tch-cuda"
            elif impl in ("cuda", "wgpu"):
                impl = "burn " + impl
            model = j["job"].split(":")[1]
            rows.append({
                "impl": impl, "model": model, "mode": r["mode"], "batch": r["batch"], "seq": r["seq"],
                "step": r["median_step_s"], "tps": r["tokens_per_s"], "mfu": r.get("mfu"),
                "mem": j.get("gpu_mem_peak_mib"), "first": (r.get("warmup_steps_s") or [None])[0],
                "precision": r["precision"],
            })
    ref = {}
    for r in rows:
        if "error" not in r and r["impl"].startswith("pytorch"):
            ref[(r["model"], r["mode"], r["batch"], r["seq"], r["impl"])] = r["tps"]
    print("| model | step | batch × seq | implementation | median step | tokens/s | MFU | card memory | first step | × eager | × compile |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    order = {"pytorch-eager": 0, "pytorch-compile": 1, "burn cuda": 2, "burn tch-cuda": 3, "burn wgpu": 4}
    rows.sort(key=lambda r: (r["model"], r["mode"], r["batch"], order.get(r["impl"], 9)))
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['impl']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        key = (r["model"], r["mode"], r["batch"], r["seq"])
        eager, comp = ref.get(key + ("pytorch-eager",)), ref.get(key + ("pytorch-compile",))
        ratio = lambda base: f"{r['tps'] / base:.2f}×" if base else ""
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None and r["mode"] != "decode" else ""
        mem = f"{r['mem'] / 1024:.1f} GiB" if r["mem"] else ""
        first = f"{r['first']:.1f} s" if r["first"] is not None else ""
        print(f"| {r['model']} | {r['mode']} | {r['batch']} × {r['seq']} | {r['impl']} | {1000 * r['step']:.1f} ms "
              f"| {r['tps']:,.0f} | {mfu} | {mem} | {first} | {ratio(eager)} | {ratio(comp)} |")


if __name__ == "__main__":
    main()
