#!/usr/bin/env python3
"""Where a step's GPU time goes, from Nsight Compute's per-kernel durations.

Input: `ncu --metrics gpu__time_duration.sum --csv --print-units base --log-file F.csv CMD`
(plain or `.xz`). Each kernel launch is one row; this groups them by kernel name (and, with
`--by-grid`, by grid and block), prints count, total and mean time, and divides the totals by
`--steps` (the steps the profiled command ran, warm-up included) to give time per step.
`--last N` keeps only the last N launches (e.g. the timed step's, when its count is known).
"""

import argparse
import csv
import io
import lzma
import re
import sys
from collections import defaultdict


def rows(path):
    raw = lzma.open(path, "rt") if path.endswith(".xz") else open(path, encoding="utf-8")
    with raw:
        text = raw.read()
    # ncu prints its own `==PROF==` lines into the log before the table.
    start = text.find('"ID"')
    if start < 0:
        sys.exit(f"{path}: no ncu CSV header")
    for r in csv.DictReader(io.StringIO(text[start:])):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "second": 1e3, "s": 1e3}.get(unit)
        if scale is None:
            sys.exit(f"{path}: unknown unit {unit!r}")
        yield int(r["ID"]), r["Kernel Name"], r.get("Grid Size", ""), r.get("Block Size", ""), value * scale


def short(name, width):
    # Template arguments and parameter lists say little at this level.
    s = re.sub(r"\(.*\)$", "", name)
    depth, out = 0, []
    for ch in s:
        if ch == "<":
            depth += 1
            if depth == 1:
                out.append("<…>")
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= width else s[: width - 1] + "…"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--steps", type=float, default=1.0, help="steps the profile covers")
    ap.add_argument("--last", type=int, default=0, help="keep only the last N launches")
    ap.add_argument("--by-grid", action="store_true", help="group by grid and block too")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--width", type=int, default=90)
    a = ap.parse_args()
    launches = sorted(rows(a.csv))
    if a.last:
        launches = launches[-a.last :]
    if not launches:
        sys.exit("no kernel rows")
    groups = defaultdict(lambda: [0, 0.0])
    for _, name, grid, block, ms in launches:
        key = (short(name, a.width),) + ((grid, block) if a.by_grid else ())
        groups[key][0] += 1
        groups[key][1] += ms
    total = sum(ms for *_, ms in launches)
    n = a.steps
    print(f"{len(launches)} launches, {total:.1f} ms of GPU time; per step ({n:g}): "
          f"{len(launches) / n:.0f} launches, {total / n:.1f} ms")
    print(f"{'ms/step':>9} {'share':>6} {'launches':>9} {'mean µs':>9}  kernel")
    for key, (count, ms) in sorted(groups.items(), key=lambda kv: -kv[1][1])[: a.top]:
        label = "  ".join(key)
        print(f"{ms / n:9.2f} {100 * ms / total:5.1f}% {count / n:9.0f} {1e3 * ms / count:9.1f}  {label}")


if __name__ == "__main__":
    main()
