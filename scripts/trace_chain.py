#!/usr/bin/env python3
"""Where the kernels of a chain of dependent launches go, from `llama bench --trace-gpu FILE.json`.

Under programmatic dependent launch a kernel starts (and waits) before the one ahead has ended,
so a kernel's own duration overstates its cost; the time from its start to the next kernel's
start is what it adds to the chain. For every kernel name (a kernel that recurs with different
neighbours, such as the one-row product, is labelled by the kernel before it), this prints the
median duration and the median start-to-next-start over the timed steps (the first `--skip`
steps left out), and the median span of a step's GPU work.

    python3 scripts/trace_chain.py trace.json [--skip 2]
"""
import argparse
import collections
import json
import re
import statistics


def short(name):
    """A readable kernel name: ours as they are, torch's by the operation in the mangled name."""
    if name.startswith("_Z"):
        m = re.search(r"(indexSelect|bfloat16_copy|CatArray|MulFunctor|elementwise|reduce|gemm)", name)
        return m.group(1) if m else name[:30]
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--skip", type=int, default=2, help="timed steps left out at the start")
    args = ap.parse_args()
    events = json.load(open(args.trace))["traceEvents"]
    steps = [e for e in events if e.get("tid") == "steps"]
    work = sorted(
        (e for e in events if e.get("ph") == "X" and e.get("tid") != "steps"
         and not e["name"].startswith("mem")),
        key=lambda e: e["ts"],
    )
    dur, step_to_step, spans = collections.defaultdict(list), collections.defaultdict(list), []
    for s in steps[args.skip:]:
        a, b = s["ts"], s["ts"] + s["dur"]
        k = [e for e in work if a <= e["ts"] <= b]
        if len(k) < 2:
            continue
        spans.append(k[-1]["ts"] + k[-1]["dur"] - k[0]["ts"])
        for i in range(len(k) - 1):
            label = f"{short(k[i]['name'])}  (after {short(k[i - 1]['name']) if i else '-'})"
            dur[label].append(k[i]["dur"])
            step_to_step[label].append(k[i + 1]["ts"] - k[i]["ts"])
    print(f"{len(spans)} steps; median GPU span per step {statistics.median(spans):.1f} µs")
    print(f"{'kernel (after the kernel before it)':70} {'count':>6} {'duration':>9} {'to next':>8}")
    for label in sorted(dur, key=lambda l: -sum(step_to_step[l])):
        n = len(dur[label])
        print(f"{label[:70]:70} {n:6d} {statistics.median(dur[label]):9.2f} "
              f"{statistics.median(step_to_step[label]):8.2f}")


if __name__ == "__main__":
    main()
