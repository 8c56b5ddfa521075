#!/usr/bin/env python3
"""Scheduling latency of an lbmesh cluster: how long from `service scale
web=N` until N tasks serve, and from a node's death (kill -9) until its tasks
serve elsewhere. With `--update`: how long a rolling update of 3 replicas
takes with the default drain timeout, stop-first and start-first, until
every task of the new version serves and no old one runs (`--baseline
LBD` measures another build in the same run).

Starts three lbd processes on 127.B.0.1/.2/.3 (the process runtime: each task
is busybox httpd; `--docker` uses the test image lbmesh-test:v1 instead),
repeats each measurement `--rounds` times and prints medians and spreads.
Every wait is bounded; all traffic stays on loopback.

    python3 loadtest/scheduling.py --lbd target/release/lbd --lbctl target/release/lbctl
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SERVER = ('d=$(mktemp -d) && echo "$LBMESH_TASK_ID" > $d/index.html '
          '&& exec busybox httpd -f -p $HOST:$PORT -h $d')
HEARTBEAT = ["--heartbeat-interval", "300ms", "--heartbeat-grace", "3s"]


class Cluster:
    def __init__(self, lbd, lbctl, workdir):
        self.lbd, self.lbctl_bin, self.dir = lbd, lbctl, workdir
        self.block = random.randint(150, 199)
        self.procs = [None, None, None]
        self.token = None

    def ip(self, n):
        return f"127.{self.block}.0.{n + 1}"

    # fixed-port-ok: each cluster has its own random 127.B.0.0/16 block, so
    # lbd's default ports (API :9900, Raft :9901) are free there.

    def spawn(self, n, join=None):
        args = [self.lbd, "--advertise-addr", self.ip(n), "--data-dir", f"{self.dir}/node{n}",
                "--vip-range", f"127.{self.block}.250.0/24", "--shutdown-grace", "1s"] + HEARTBEAT
        if join:
            args += ["--join", f"{self.ip(0)}:9900", "--token", join]  # fixed-port-ok
        log = open(f"{self.dir}/node{n}.log", "a")
        self.procs[n] = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
        return self.procs[n]

    def form(self):
        first = self.spawn(0)
        manager = None
        deadline = time.time() + 20
        while time.time() < deadline and self.token is None:
            line = first.stdout.readline()
            if line.startswith("Add a manager:"):
                manager = line.split()[-1]
            if line.startswith("lbctl control token"):
                self.token = line.split()[-1]
        if not self.token:
            sys.exit("lbd printed no tokens; see " + self.dir)
        for n in (1, 2):
            self.spawn(n, join=manager)
            self.wait(lambda: len([x for x in self.json(0, "node", "ls") or [] if x["status"] == "ready"]) == n + 1,
                      30, f"{n + 1} nodes")

    def lbctl(self, n, *args):
        env = dict(os.environ, LBCTL_TOKEN=self.token)
        return subprocess.run([self.lbctl_bin, "--host", f"{self.ip(n)}:9900", *args],  # fixed-port-ok
                              capture_output=True, text=True, env=env, timeout=60)

    def json(self, n, *args):
        out = self.lbctl(n, "--format", "json", *args)
        if out.returncode != 0:
            return None
        try:
            return json.loads(out.stdout)
        except ValueError:
            return None

    def serving(self, n, service):
        tasks = self.json(n, "service", "ps", service) or []
        return [t for t in tasks if t["desired"] == "running" and t["state"] == "running"
                and t["health"] in ("healthy", "none")]

    @staticmethod
    def wait(check, limit, what):
        deadline = time.time() + limit
        while time.time() < deadline:
            if check():
                return
            time.sleep(0.02)
        sys.exit(f"timed out after {limit}s waiting for {what}")

    def stop(self):
        alive = [n for n, proc in enumerate(self.procs) if proc and proc.poll() is None]
        info = next((i for i in (self.json(n, "cluster", "info") for n in alive) if i), {}) if self.token else {}
        cluster_id = info.get("id")
        for proc in self.procs:
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        if cluster_id and shutil.which("docker"):
            # The killed node's containers outlive it: remove this cluster's.
            ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=io.lbmesh.cluster={cluster_id}"],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def free_port(cluster):
    for _ in range(100):
        port = random.randint(20000, 40000)
        try:
            for n in range(3):
                with socket.socket() as s:
                    s.bind((cluster.ip(n), port))
            return port
        except OSError:
            continue
    sys.exit("no free port")


def summary(values):
    med = statistics.median(values)
    return f"{med * 1000:.0f} ms (min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})"


def rolling_update(lbd, lbctl):
    """Seconds of a stop-first, then a start-first update of 3 replicas
    (drain timeout and everything else the defaults), on a new cluster."""
    workdir = tempfile.mkdtemp(prefix="lbmesh-update-")
    cluster = Cluster(lbd, lbctl, workdir)
    times = {}
    try:
        cluster.form()
        port = free_port(cluster)
        out = cluster.lbctl(0, "service", "create", "web", "--command", SERVER, "--replicas", "3",
                            "-p", f"{port}:80")
        if out.returncode != 0:
            sys.exit(out.stderr)
        cluster.wait(lambda: len(cluster.serving(0, "web")) == 3, 60, "3 tasks")
        for version, order in enumerate(("stop-first", "start-first"), start=1):
            before = {t["id"] for t in cluster.json(0, "service", "ps", "web") or []}
            started = time.monotonic()
            out = cluster.lbctl(0, "service", "update", "--detach", "web", "--env", f"VERSION={version}",
                                "--update-order", order)
            if out.returncode != 0:
                sys.exit(out.stderr)

            def done():
                tasks = cluster.json(0, "service", "ps", "web") or []
                fresh = [t for t in cluster.serving(0, "web") if t["id"] not in before]
                old_running = [t for t in tasks if t["id"] in before and t["state"] == "running"]
                return len(fresh) == 3 and not old_running
            cluster.wait(done, 300, f"the {order} update")
            times[order] = time.monotonic() - started
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return times


def updates(args):
    builds = [("lbd", args.lbd)] + ([("baseline", args.baseline)] if args.baseline else [])
    print("| build | stop-first update of 3 replicas | start-first update of 3 replicas |")
    print("|---|---|---|")
    for name, lbd in builds:
        times = rolling_update(lbd, args.lbctl)
        print(f"| {name} | {times['stop-first']:.1f} s | {times['start-first']:.1f} s |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lbd", default="target/release/lbd")
    parser.add_argument("--lbctl", default="target/release/lbctl")
    parser.add_argument("--replicas", type=int, default=6, help="N of `service scale web=N`")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docker", action="store_true", help="run containers of lbmesh-test:v1 instead of processes")
    parser.add_argument("--update", action="store_true", help="time rolling updates of 3 replicas instead")
    parser.add_argument("--baseline", help="with --update: another lbd build, measured in the same run")
    args = parser.parse_args()
    for tool in (args.lbd, args.lbctl, *([args.baseline] if args.baseline else [])):
        if not shutil.which(tool) and not os.path.exists(tool):
            sys.exit(f"{tool} not found; build with cargo build --release")
    if args.update:
        updates(args)
        return

    scale_times, heal_times = [], []
    for round_no in range(args.rounds):
        workdir = tempfile.mkdtemp(prefix="lbmesh-sched-")
        cluster = Cluster(args.lbd, args.lbctl, workdir)
        try:
            cluster.form()
            port = free_port(cluster)
            task = ["--image", "lbmesh-test:v1"] if args.docker else ["--command", SERVER]
            out = cluster.lbctl(0, "service", "create", "web", *task, "--replicas", "1",
                                "-p", f"{port}:80", "--drain-timeout", "0s")
            if out.returncode != 0:
                sys.exit(out.stderr)
            cluster.wait(lambda: len(cluster.serving(0, "web")) == 1, 60, "the first task")

            started = time.monotonic()
            cluster.lbctl(0, "service", "scale", "--detach", f"web={args.replicas}")
            cluster.wait(lambda: len(cluster.serving(0, "web")) == args.replicas, 60, f"{args.replicas} tasks")
            scale_times.append(time.monotonic() - started)

            leader = (cluster.json(0, "cluster", "info") or {}).get("leader")
            nodes = cluster.json(0, "node", "ls") or []
            victim = next(n for n in range(3)
                          if not any(x["id"] == leader and x["ingress_addr"] == cluster.ip(n) for x in nodes))
            victim_name = "node-" + cluster.ip(victim).replace(".", "-")
            watcher = next(n for n in range(3) if n != victim)
            started = time.monotonic()
            cluster.procs[victim].send_signal(signal.SIGKILL)
            cluster.procs[victim].wait()
            cluster.wait(lambda: (lambda s: len(s) == args.replicas and all(t["node_name"] != victim_name for t in s))(
                cluster.serving(watcher, "web")), 60, "the dead node's tasks elsewhere")
            heal_times.append(time.monotonic() - started)
            print(f"round {round_no + 1}: scale to {args.replicas} in {scale_times[-1] * 1000:.0f} ms, "
                  f"node death to serving elsewhere in {heal_times[-1] * 1000:.0f} ms", flush=True)
            cluster.lbctl(watcher, "service", "rm", "web")
            time.sleep(1)
        finally:
            cluster.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    runtime = "docker" if args.docker else "process"
    print()
    print(f"| measure ({runtime} runtime, {args.rounds} rounds) | median (min, max) |")
    print("|---|---|")
    print(f"| `service scale web=1→{args.replicas}` to {args.replicas} serving | {summary(scale_times)} |")
    print(f"| kill -9 of a node to its tasks serving elsewhere (grace 3 s) | {summary(heal_times)} |")


if __name__ == "__main__":
    main()
