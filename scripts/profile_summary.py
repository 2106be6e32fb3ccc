#!/usr/bin/env python3
"""Summarise a collapsed-stack profile (`llama bench --profile-host FILE.svg` writes FILE.svg.folded).

Prints, per thread, its share of the samples, then for the busiest threads the crates and the
functions that hold the most samples: "self" counts the innermost frame of each sample, "total"
counts every function once per sample it appears in. A crate is a frame's first path segment
(`burn_fusion`, `cubecl_runtime`, `libcuda`...), so the question "is it autodiff, fusion or
launches" is answered by the crate table.

    python3 scripts/profile_summary.py host.svg.folded [--threads 3] [--top 25] [--grep PATTERN]
"""

import argparse
import collections
import re
import sys


def crate_of(frame: str):
    """The crate (first path segment) of a demangled Rust name, or None (inlined frames are
    often named without their path; C symbols have none)."""
    name = frame.lstrip("<&*( ").removeprefix("mut ").removeprefix("dyn ")
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
    return m.group(1) if m else None


def sample_crate(frames) -> str:
    """The crate a sample is charged to: its innermost frame with a path, else that frame."""
    for fr in reversed(frames):
        cr = crate_of(fr)
        if cr:
            return cr
    return frames[-1][:40] if frames else "?"


def short(frame: str, width: int) -> str:
    # Drop generic arguments, which make Burn's names thousands of characters long.
    out, depth = [], 0
    for ch in frame:
        if ch == "<":
            depth += 1
            if depth == 1:
                out.append("<…>")
            continue
        if ch == ">" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= width else s[: width - 1] + "…"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folded")
    ap.add_argument("--threads", type=int, default=3, help="busiest threads to break down")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--grep", help="only samples whose stack contains this regex")
    ap.add_argument("--width", type=int, default=110)
    ap.add_argument(
        "--focus",
        default=r"^<?&?(burn|cubecl|cubek|cudarc|llama_model|llama_experiments)",
        help="functions listed by total time: only those matching this regex",
    )
    args = ap.parse_args()

    stacks = []  # (thread, frames outermost first, count)
    with open(args.folded, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            body, _, count = line.rpartition(" ")
            frames = body.split(";")
            if args.grep and not re.search(args.grep, body):
                continue
            stacks.append((frames[0], frames[1:], int(count)))
    total = sum(c for _, _, c in stacks)
    if total == 0:
        print("no samples")
        return 1
    per_thread = collections.Counter()
    for t, _, c in stacks:
        per_thread[t] += c
    print(f"{total} samples")
    for t, c in per_thread.most_common():
        print(f"  {c:7d} {100 * c / total:5.1f} %  thread {t}")
    for thread, tc in per_thread.most_common(args.threads):
        self_fn, total_fn = collections.Counter(), collections.Counter()
        self_crate, total_crate = collections.Counter(), collections.Counter()
        focus = re.compile(args.focus)
        for t, frames, c in stacks:
            if t != thread or not frames:
                continue
            self_fn[frames[-1]] += c
            self_crate[sample_crate(frames)] += c
            for fr in set(frames):
                if focus.search(fr):
                    total_fn[fr] += c
            for cr in {crate_of(fr) for fr in frames} - {None}:
                total_crate[cr] += c
        print(f"\n== thread {thread}: {tc} samples ==")
        print("crates by self (self %, total %):")
        for cr, c in self_crate.most_common(args.top):
            print(f"  {100 * c / tc:5.1f} {100 * total_crate[cr] / tc:5.1f}  {cr}")
        print("functions by self:")
        for fr, c in self_fn.most_common(args.top):
            print(f"  {100 * c / tc:5.1f}  {short(fr, args.width)}")
        print(f"functions by total (matching {args.focus}):")
        for fr, c in total_fn.most_common(args.top):
            print(f"  {100 * c / tc:5.1f}  {short(fr, args.width)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
