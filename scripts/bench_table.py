#!/usr/bin/env python3
"""Summarise criterion's saved estimates for the `pairs` benchmark as markdown tables.

Reads target/criterion/pairs_<set>_<threads>t/<subject>/<case>/new/estimates.json (criterion
replaces '/' in group names by '_') and prints, per working-set mode, the median ns per
alloc+free pair for each subject, the ratio against glibc and rts-alloc, and the two-thread
scaling (one-thread time / two-thread aggregate time).
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
subjects = ["shmpool", "shmpool-uncached", "glibc", "rts-alloc"]
cases = ["64B", "1KiB", "64KiB", "random16B-4KiB"]


def median(mode, threads, subject, case):
    path = os.path.join(root, f"pairs_{mode}_{threads}t", subject, case, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None


def fmt(value):
    return "–" if value is None else f"{value:.1f}"


def ratio(a, b):
    return "–" if a is None or b is None else f"{a / b:.2f}×"


for mode in ["working-set", "no-working-set"]:
    print(f"\n### {mode}: median ns per alloc+free pair (two threads: aggregate)\n")
    print("| threads | size | " + " | ".join(subjects) + " | shmpool / glibc | shmpool / rts-alloc |")
    print("|---|---|" + "---|" * len(subjects) + "---|---|")
    for threads in [1, 2]:
        for case in cases:
            values = {s: median(mode, threads, s, case) for s in subjects}
            cells = " | ".join(fmt(values[s]) for s in subjects)
            print(f"| {threads} | {case} | {cells} | {ratio(values['shmpool'], values['glibc'])} | "
                  f"{ratio(values['shmpool'], values['rts-alloc'])} |")
    print(f"\nTwo-thread scaling ({mode}): one-thread ns / two-thread aggregate ns (target ≥ 1.5)\n")
    print("| size | " + " | ".join(subjects) + " |")
    print("|---|" + "---|" * len(subjects))
    for case in cases:
        cells = []
        for s in subjects:
            one, two = median(mode, 1, s, case), median(mode, 2, s, case)
            cells.append("–" if one is None or two is None else f"{one / two:.2f}")
        print(f"| {case} | " + " | ".join(cells) + " |")
