#!/usr/bin/env python3
"""Times several commands alternating run by run (in a rotating order), so that this shared
machine's noise hits each alike; prints medians and writes them as JSON.

    scripts/alternate.py --runs N [--warmup W] [--json FILE] [--setup NAME::COMMAND] NAME::COMMAND ...

--setup runs before each run of NAME, untimed; what it prints replaces `{}` in NAME's command
(a pod `husk prepare` made, for `husk run-prepared {}`).

hyperfine runs each command's batch in turn, so a noisy minute lands on one command only; for the
~10 ms pod starts compared here that moved ratios by 20 %. Commands are split like a shell
would (shlex) and run without a shell, whose own start-up would be noise at this scale.
"""
import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--setup", action="append", default=[], metavar="NAME::COMMAND")
    ap.add_argument("commands", nargs="+", metavar="NAME::COMMAND")
    a = ap.parse_args()
    cmds = []
    for c in a.commands:
        name, sep, cmd = c.partition("::")
        if not sep or not cmd:
            sys.exit(f"alternate.py: {c!r} is not NAME::COMMAND")
        cmds.append((name, shlex.split(cmd)))
    setups = {}
    for c in a.setup:
        name, _, cmd = c.partition("::")
        setups[name] = shlex.split(cmd)
    times = {name: [] for name, _ in cmds}
    for i in range(a.warmup + a.runs):
        k = i % len(cmds)
        for name, argv in cmds[k:] + cmds[:k]:
            if name in setups:
                got = subprocess.run(setups[name], check=True, capture_output=True, text=True).stdout.strip()
                argv = [got if w == "{}" else w for w in argv]
            t = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            if i >= a.warmup:
                times[name].append(time.perf_counter() - t)
    results = [
        {"command": name, "median": statistics.median(times[name]), "times": times[name]} for name, _ in cmds
    ]
    for r in results:
        print(f"{r['command']:<40} {r['median'] * 1000:8.2f} ms", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results}, f)


if __name__ == "__main__":
    main()
