#!/usr/bin/env python3
"""Paired A/B timing: abpair.py N 'CMD A' 'CMD B' runs A and B alternately (ABBA order), so
both see the same moment of a noisy machine, and prints one line:
    median_a median_b median_paired_ratio q1_ratio q3_ratio
(milliseconds; ratio = A/B per pair). Commands are split on spaces (no shell)."""
import os
import statistics
import sys
import time


def once(argv):
    t = time.perf_counter_ns()
    # The commands' own output goes to /dev/null: stdout carries only this script's line.
    pid = os.posix_spawn(argv[0], argv, os.environ,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)])
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"abpair: {' '.join(argv)} failed (wait status {status})")
    return (time.perf_counter_ns() - t) / 1e6


def main():
    n, a, b = int(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
    for _ in range(5):
        once(a)
        once(b)
    ta, tb, r = [], [], []
    for i in range(n):
        if i % 2 == 0:
            x, y = once(a), once(b)
        else:
            y, x = once(b), once(a)
        ta.append(x)
        tb.append(y)
        r.append(x / y)
    q = statistics.quantiles(r, n=4)
    print(f"{statistics.median(ta):.2f} {statistics.median(tb):.2f} "
          f"{statistics.median(r):.3f} {q[0]:.3f} {q[2]:.3f}")


main()
