#!/usr/bin/env python3
"""How long a node takes to join, for `--lbd` and, in the same run, a
`--baseline` build (issue 14: the cost of the cluster CA and mutual TLS).

Each round bootstraps a node on a fresh 127.B.0.1, then joins two managers
(127.B.0.2 and .3) one after the other; a join is timed from the joiner's
spawn until `lbctl node ls` on the first node shows it ready. With TLS a
join is: a certificate request pinned to the token's CA digest, the
registry start, the join call, the leader's probe and the learner's
catch-up, then the promotion. Rounds alternate between the builds, so
both see the same machine load. Every wait is bounded.

    flock -o /tmp/lbmesh-cargo.lock python3 loadtest/join_time.py \\
        --lbd target/release/lbd --lbctl target/release/lbctl \\
        --baseline-lbd /tmp/base/lbd --baseline-lbctl /tmp/base/lbctl --rounds 5
"""
import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from chaos import wait_for  # the loadtest/ directory is on sys.path

API_PORT = 9900  # fixed-port-ok: lbd's default, on the run's own 127.B.0.N


def one_round(lbd, lbctl):
    """Join times (seconds) of the second and third node."""
    block = random.randint(100, 199)
    ip = lambda n: f"127.{block}.0.{n + 1}"
    work = tempfile.mkdtemp(prefix="lbmesh-join-")
    procs = []
    try:
        def spawn(n, join=None):
            args = [lbd, "--advertise-addr", ip(n), "--data-dir", f"{work}/n{n}",
                    "--threads", "1", "--vip-range", f"127.{block}.128.0/17"]
            if join:
                args += ["--join", f"{ip(0)}:{API_PORT}", "--token", join]
            out = open(f"{work}/n{n}.out", "w")
            err = open(f"{work}/n{n}.log", "w")
            procs.append(subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL))

        spawn(0)

        def tokens():
            text = open(f"{work}/n0.out").read()
            manager = re.search(r"Add a manager:.*--token (\S+)", text)
            control = re.search(r"lbctl control token.*: (\S+)", text)
            return manager and control and (manager.group(1), control.group(1))

        manager, control = wait_for("tokens", 30, tokens, interval=0.02)

        def ready():
            out = subprocess.run([lbctl, "--host", f"{ip(0)}:{API_PORT}", "--token", control,
                                  "--format", "json", "node", "ls"],
                                 capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                return 0
            return sum(1 for node in json.loads(out.stdout) if node["status"] == "ready")

        wait_for("the first node", 30, lambda: ready() == 1, interval=0.02)
        times = []
        for n in (1, 2):
            started = time.monotonic()
            spawn(n, join=manager)
            wait_for(f"node {n + 1} ready", 60, lambda: ready() == n + 1, interval=0.02)
            times.append(time.monotonic() - started)
        return times
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lbd", required=True)
    parser.add_argument("--lbctl", required=True)
    parser.add_argument("--baseline-lbd")
    parser.add_argument("--baseline-lbctl")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    builds = [("lbd", args.lbd, args.lbctl)]
    if args.baseline_lbd:
        builds.append(("baseline", args.baseline_lbd, args.baseline_lbctl or args.lbctl))
    results = {name: [] for name, _, _ in builds}
    for _ in range(args.rounds):
        for name, lbd, lbctl in builds:
            results[name].extend(one_round(lbd, lbctl))
    print("| build | joins | median s | max s |")
    print("|---|---|---|---|")
    for name, times in results.items():
        print(f"| {name} | {len(times)} | {statistics.median(times):.3f} | {max(times):.3f} |")


if __name__ == "__main__":
    sys.exit(main())
