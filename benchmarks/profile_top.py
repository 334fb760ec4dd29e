"""Top functions by self and total time from py-spy's raw (collapsed) output.

    py-spy record --format raw -o benchmarks/out/profile.raw --pid PID -d 6 --nonblocking
    python benchmarks/profile_top.py benchmarks/out/profile.raw [-n 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw")
    parser.add_argument("-n", type=int, default=25)
    args = parser.parse_args()
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    samples = 0
    with open(args.raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            samples += n
            # "func (file:line)" frames; drop the line number so a function is one row.
            frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack.split(";")]
            frames = [fr for fr in frames if not fr.startswith("process ")
                      and not fr.startswith("thread ")]
            if not frames:
                continue
            self_time[frames[-1]] += n
            for fr in set(frames):
                total_time[fr] += n
    print(f"{samples} samples (idle excluded)\n")
    print(f"{'self %':>7} {'total %':>8}  function")
    for fr, n in self_time.most_common(args.n):
        print(f"{100 * n / samples:7.1f} {100 * total_time[fr] / samples:8.1f}  {fr}")
    print(f"\n{'total %':>8}  function (inclusive, top {args.n})")
    for fr, n in total_time.most_common(args.n):
        print(f"{100 * n / samples:8.1f}  {fr}")


if __name__ == "__main__":
    main()
