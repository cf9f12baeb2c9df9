#!/usr/bin/env python3
"""Print criterion's median estimate of every mmemu bench as a markdown table.

Usage (after `cargo bench -p benches`):  python3 benches/criterion-medians.py [target/criterion]

Reads target/criterion/<group>/<bench...>/new/estimates.json (criterion 0.5
layout) and benchmark.json for the throughput, so per-element figures
(ns/page for the 1 GiB munmaps) are printed beside the per-iteration median.
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
rows = []
for dirpath, dirnames, filenames in os.walk(root):
    if os.path.basename(dirpath) != "new" or "estimates.json" not in filenames:
        continue
    with open(os.path.join(dirpath, "estimates.json")) as f:
        est = json.load(f)
    bench = {}
    try:
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
    except OSError:
        pass
    name = bench.get("full_id") or os.path.relpath(os.path.dirname(dirpath), root)
    med = est["median"]["point_estimate"]
    thr = (bench.get("throughput") or {}).get("Elements")
    rows.append((name, med, thr))

def fmt(ns):
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= div:
            return f"{ns / div:.3g} {unit}"
    return f"{ns:.3g} ns"

print("| bench | median / iteration | elements | median / element |")
print("|---|---:|---:|---:|")
for name, med, thr in sorted(rows):
    per = fmt(med / thr) if thr and thr > 1 else ""
    print(f"| {name} | {fmt(med)} | {thr or ''} | {per} |")
