#!/usr/bin/env python3
"""The most expensive kernels of pedconv's PEDConv training steps, from CubeCL's profiling log.

`pedconv bench` run with CubeCL's profiling logger on (`[profiling] logger = { level = "basic",
stderr = true }` in cubecl.toml) writes one line per kernel, `| 1.234ms    | name`, among its
own lines. The kernels between `bench: <network> pedconv, batch …` and `bench: <network> pedconv
inference …` are the PEDConv network's training steps (`--steps` of them: two warm-ups, the
peak-memory run and the timed repetitions); this prints a markdown table of the `--top` kernels
by device time, per step.

    python3 bench/cubecl_profile.py kernels.log --steps 4 --top 15
"""

import argparse
import re
import sys
from collections import defaultdict

KERNEL = re.compile(r"^\| ([0-9.]+)(ns|µs|us|ms|s)\s*\| (.*)$")
TO_MS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def training_kernels(lines):
    """(milliseconds, name) of every kernel line inside the PEDConv training section."""
    inside = False
    for line in lines:
        if line.startswith("bench: ") and " pedconv, batch " in line:
            inside = True
        elif line.startswith("bench: ") and " pedconv inference" in line:
            return
        elif inside and (match := KERNEL.match(line.rstrip("\n"))):
            value, unit, name = match.groups()
            yield float(value) * TO_MS[unit], name.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log")
    parser.add_argument("--steps", type=int, required=True, help="training steps in the section")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    with open(args.log, encoding="utf-8", errors="replace") as log:
        kernels = list(training_kernels(log))
    if not kernels:
        print("No kernel lines in the PEDConv training section of the log.")
        return 1
    totals, counts = defaultdict(float), defaultdict(int)
    for millis, name in kernels:
        totals[name] += millis
        counts[name] += 1
    step_ms = sum(totals.values()) / args.steps
    print(
        f"{len(kernels) // args.steps} kernels and {step_ms:.1f} ms of device time per training "
        f"step (each kernel timed alone), averaged over {args.steps} steps.\n"
    )
    print("| kernel | ms per step | launches per step | % of the step |")
    print("| --- | ---: | ---: | ---: |")
    ranked = sorted(totals, key=totals.get, reverse=True)[: args.top]
    for name in ranked:
        short = name if len(name) <= 80 else name[:77] + "…"
        per_step = totals[name] / args.steps
        print(
            f"| `{short}` | {per_step:.3f} | {counts[name] / args.steps:g} "
            f"| {100 * per_step / step_ms:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
