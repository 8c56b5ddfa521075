#!/usr/bin/env python3
"""Cost of one change as the cluster grows: one lbd node (or three), N
services of 3 static endpoints each, for round-robin and Maglev.

For each N (default 100, 1,000, 5,000) and algorithm, on a fresh cluster:

- fill: N services created one after another through /v1 (each publishes
  one port; each gets a VIP), the last `--sample` of them timed from the
  create's answer until its published port accepts a connection that a
  backend answers (create -> routed); with `--nodes 3` the creates go to
  the first node and the routes are timed on the third, so a change's
  replication is in the figure;
- change: `--sample` services get 3 new endpoints each, timed from the
  update's answer until a connection to the port reaches a new backend
  (endpoint change -> routed);
- lbd CPU per change: lbd's user + system time over the change phase,
  divided by its number of changes (with three nodes: the first node's,
  which serves the API and leads, and the third's, a follower);
- RSS per service: (RSS with N services - RSS before the first) / N;
- idle CPU: lbd's CPU over 12 s with no change, per second (the
  scheduler's periodic full round falls in it);
- service ls: the median of 5 `GET /v1/services` (what `lbctl service
  ls` reads);
- join: a second node (127.B.0.2) joins the full node, timed until the
  last service's port answers on it, and the snapshot it installed (its
  log's bytes; "-" when the leader sent the log instead).

Runs `--lbd` and, for a comparison in the same run, `--baseline` (another
build's lbd). The nodes run on a random 127.B.0.1 (.2, .3) with the VIP
range 127.B.128.0/17 (published ports 20000 + i, the API on :9900) with
one proxy thread and IPv4 VIPs only, so each service costs a node two
descriptors (its port and its VIP; a v6 VIP would be a third). With
`--vip-only` the services publish no port and are timed on their VIPs
(`VIP:80`), one descriptor each; the join is then not timed (nodes on one
machine bind the same VIPs, so an answer could come from either). N is
bounded by the descriptor hard limit (`ulimit -Hn`; lbd raises its soft
limit to it), so the script first raises its own hard limit (inherited
by lbd) to what the largest size needs, which takes CAP_SYS_RESOURCE;
without it, it stops at once naming the largest size the limit allows.
The backends are six threads in this process. Every wait is bounded.

    flock -o /tmp/lbmesh-cargo.lock python3 loadtest/scale.py \\
        --lbd target/release/lbd [--baseline /tmp/main-lbd] [--sizes 100,1000,5000] \\
        [--nodes 3] [--vip-only]
"""
import argparse
import http.client
import json
import os
import random
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

FIRST_PORT = 20000  # fixed-port-ok: on the run's own random 127.B.0.1
API_PORT = 9900  # fixed-port-ok: lbd's default, on the run's own 127.B.0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Descriptors an lbd holds besides its listeners: the API, Raft, the
# registry file, the backends' connections.
DESCRIPTOR_MARGIN = 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
# Seconds the idle CPU is measured over: more than the scheduler's
# periodic full round (10 s), so one falls in it.
IDLE_WINDOW_S = 12


class Backends:
    """Six TCP servers that write their name and close: a, b, c serve every
    service at first, d, e, f replace them in the change phase."""

    def __init__(self, ip):
        self.addrs = {}
        self.stop = False
        for name in "abcdef":
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, 0))
            sock.listen(1024)
            self.addrs[name] = f"{ip}:{sock.getsockname()[1]}"
            threading.Thread(target=self.serve, args=(sock, name.encode()), daemon=True).start()

    def serve(self, sock, name):
        while not self.stop:
            try:
                conn, _ = sock.accept()
                conn.sendall(name + b"\n")
                conn.close()
            except OSError:
                pass


def answer(ip, port, timeout=0.5):
    """The backend name a connection to ip:port reads, or None."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as conn:
            data = conn.recv(16)
            return data.decode().strip() or None
    except OSError:
        return None


def wait_answer(ip, port, names, limit=10.0):
    """Polls until a connection reads one of `names`; the seconds it took
    from now, or None at the limit."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if answer(ip, port) in names:
            return time.perf_counter() - start
        time.sleep(0.0005)
    return None


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Node:
    """The bootstrapping node of a run: 127.B.0.1 on a random block B."""

    def __init__(self, lbd, workdir):
        self.block = random.randint(100, 199)
        self.ip = f"127.{self.block}.0.1"
        self.dir = workdir
        # One proxy thread: every listener costs one descriptor per thread,
        # and each service has two (its published port and its VIP).
        args = [lbd, "--advertise-addr", self.ip, "--threads", "1",
                "--data-dir", f"{workdir}/data", "--vip-range", f"127.{self.block}.128.0/17",
                # IPv4 VIPs only: a v6 VIP would be a third listener per service.
                "--vip-range-v6", "none",
                "--shutdown-grace", "1s"]
        self.log = open(f"{workdir}/lbd.log", "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.members = []
        self.token = None
        self.manager_token = None
        deadline = time.time() + 30
        while time.time() < deadline and self.token is None:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("Add a manager:"):
                self.manager_token = line.split()[-1]
            if line.startswith("lbctl control token"):
                self.token = line.split()[-1]
        if not self.token:
            sys.exit(f"lbd printed no control token; see {workdir}/lbd.log")
        self.conn = self.connect()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.call("GET", "/v1/cluster")[0] == 200:
                    break
            except OSError:
                self.conn = self.connect()
            time.sleep(0.1)

    def connect(self):
        """A keep-alive TLS connection to the API (TLS only), trusting the
        cluster CA in the data dir; the certificate names
        api.lbmesh.internal, so the chain is what is checked."""
        ca = f"{self.dir}/data/ca.crt"
        if not os.path.exists(ca):  # a --baseline lbd from before TLS
            return http.client.HTTPConnection(self.ip, API_PORT, timeout=60)
        context = ssl.create_default_context(cafile=ca)
        context.check_hostname = False
        return http.client.HTTPSConnection(self.ip, API_PORT, timeout=60, context=context)

    def call(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        data = json.dumps(body) if body is not None else None
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def add_members(self, lbd, count):
        """Joins `count` more nodes (127.B.0.2, ...) as managers and waits
        until the cluster lists them all ready."""
        for k in range(2, count + 2):
            ip = f"127.{self.block}.0.{k}"
            log = open(f"{self.dir}/node{k}.log", "w")
            proc = subprocess.Popen(
                [lbd, "--advertise-addr", ip, "--threads", "1", "--data-dir", f"{self.dir}/node{k}",
                 "--join", self.ip, "--token", self.manager_token, "--shutdown-grace", "1s"],
                stdout=subprocess.DEVNULL, stderr=log)
            self.members.append((ip, proc, log))
        deadline = time.time() + 60
        while time.time() < deadline:
            status, body = self.call("GET", "/v1/nodes")
            if status == 200 and sum(n["status"] == "ready" for n in json.loads(body)) == count + 1:
                return
            time.sleep(0.2)
        sys.exit(f"{count} nodes did not join within 60 s; see {self.dir}/node*.log")

    def stop(self):
        for _, proc, log in self.members:
            proc.kill()
            proc.wait()
            log.close()
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def join_time(lbd, node, workdir, n, k):
    """Starts another node (127.B.0.k) that joins `node` once it holds `n`
    services: the seconds until the last service's port answers on it (so
    its routes hold the whole state), and the bytes of the snapshot it
    installed (None when the leader sent the log instead)."""
    ip = f"127.{node.block}.0.{k}"
    log_path = f"{workdir}/joiner.log"
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [lbd, "--advertise-addr", ip, "--threads", "1", "--data-dir", f"{workdir}/joiner",
             "--join", node.ip, "--token", node.manager_token, "--shutdown-grace", "1s"],
            stdout=subprocess.DEVNULL, stderr=log)
        try:
            took = wait_answer(ip, FIRST_PORT + n - 1, set("abcdef"), limit=120.0)
            joined_s = None if took is None else time.perf_counter() - start
        finally:
            proc.kill()
            proc.wait()
    snapshot = None
    with open(log_path) as log:
        for line in log:
            if "installed a snapshot" in line and "bytes=" in line:
                snapshot = int(line.split("bytes=")[1].split()[0])
    return joined_s, snapshot


def list_ms(node, rounds=5):
    """The median time of `GET /v1/services` (what `lbctl service ls`
    reads), over `rounds` calls."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        status, _ = node.call("GET", "/v1/services")
        if status != 200:
            sys.exit(f"list services: {status}")
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def spec(i, endpoints, algorithm, vip_only):
    port = {"target": 80} if vip_only else {"published": FIRST_PORT + i, "target": 80}
    return {
        "name": f"s{i}",
        "ports": [port],
        "endpoints": [{"address": a} for a in endpoints],
        "algorithm": algorithm,
    }


def pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run_one(lbd, n, algorithm, sample, join, nodes, vip_only):
    workdir = tempfile.mkdtemp(prefix="lbmesh-scale-")
    node = Node(lbd, workdir)
    try:
        node.add_members(lbd, nodes - 1)
        # Where routes are timed: the last node (a follower with three).
        timed_ip, timed_pid = (node.ip, node.proc.pid) if nodes == 1 else \
            (node.members[-1][0], node.members[-1][1].pid)
        vips = {}

        def target(i):
            return (vips[i], 80) if vip_only else (timed_ip, FIRST_PORT + i)

        backends = Backends(node.ip)
        old = [backends.addrs[x] for x in "abc"]
        new = [backends.addrs[x] for x in "def"]
        rss_before = rss_bytes(node.proc.pid)
        create_ms = []
        fill_start = time.time()
        for i in range(n):
            status, body = node.call("POST", "/v1/services", spec(i, old, algorithm, vip_only))
            if status not in (200, 201):
                sys.exit(f"create s{i}: {status} {body[:200]!r}")
            vips[i] = json.loads(body)["vip"]
            if i >= n - sample:
                took = wait_answer(*target(i), {"a", "b", "c"})
                if took is None:
                    sys.exit(f"s{i} was not routed within 10 s")
                create_ms.append(took * 1000)
        fill_s = time.time() - fill_start
        time.sleep(1)
        rss_per_service = (rss_bytes(node.proc.pid) - rss_before) / n
        # What the node spends with nothing changing (heartbeats, the
        # scheduler's periodic full round, metrics): part of every change
        # phase's CPU too.
        idle_start = cpu_seconds(node.proc.pid)
        time.sleep(IDLE_WINDOW_S)
        idle_ms_per_s = (cpu_seconds(node.proc.pid) - idle_start) / IDLE_WINDOW_S * 1000
        node.conn.close()  # the API closes a keep-alive connection idle this long
        node.conn = node.connect()
        change_ms = []
        cpu_start = [cpu_seconds(pid) for pid in (node.proc.pid, timed_pid)]
        changed = random.sample(range(n), min(sample, n))
        for i in changed:
            status, body = node.call("PUT", f"/v1/services/s{i}", spec(i, new, algorithm, vip_only))
            if status != 200:
                sys.exit(f"update s{i}: {status} {body[:200]!r}")
            took = wait_answer(*target(i), {"d", "e", "f"})
            if took is None:
                sys.exit(f"s{i}'s new endpoints were not routed within 10 s")
            change_ms.append(took * 1000)
        cpu_ms = [(cpu_seconds(pid) - start) / len(changed) * 1000
                  for pid, start in zip((node.proc.pid, timed_pid), cpu_start)]
        ls_ms = list_ms(node)
        joined_s, snapshot_bytes = join_time(lbd, node, workdir, n, nodes + 1) \
            if join and not vip_only else (None, None)
        backends.stop = True
        return {
            "n": n, "algorithm": algorithm, "fill_s": round(fill_s, 1),
            "create_p50_ms": round(pct(create_ms, 50), 2), "create_p99_ms": round(pct(create_ms, 99), 2),
            "change_p50_ms": round(pct(change_ms, 50), 2), "change_p99_ms": round(pct(change_ms, 99), 2),
            "cpu_per_change_ms": " / ".join(str(round(ms, 2)) for ms in (cpu_ms if nodes > 1 else cpu_ms[:1])),
            "rss_per_service_kib": round(rss_per_service / 1024, 1),
            "idle_ms_per_s": round(idle_ms_per_s, 1),
            "ls_ms": round(ls_ms, 1),
            "join_s": "-" if joined_s is None else round(joined_s, 2),
            "snapshot_kib": "-" if snapshot_bytes is None else round(snapshot_bytes / 1024),
        }
    finally:
        node.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def raise_descriptor_limit(needed, per_service):
    """Raises this process's descriptor limits (lbd inherits them) to
    `needed` if they are lower; exits naming the limit when it may not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), needed))
    except (ValueError, OSError) as error:
        largest = (hard - DESCRIPTOR_MARGIN) // per_service
        sys.exit(f"the largest size needs {needed} descriptors and the hard limit is {hard}, "
                 f"which this process may not raise ({error}): run as root, or with sizes up to {largest:,}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lbd", required=True)
    parser.add_argument("--baseline", help="another build's lbd, measured alike")
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--algorithms", default="round-robin,maglev")
    parser.add_argument("--sample", type=int, default=100, help="creates and changes timed per run")
    parser.add_argument("--no-join", action="store_true", help="skip the joining node's timing")
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                        help="the cluster's size: creates on the first node, routes timed on the last")
    parser.add_argument("--vip-only", action="store_true",
                        help="services publish no port and are timed on their VIPs (one descriptor each)")
    args = parser.parse_args()
    if args.vip_only and args.nodes > 1:
        # Nodes on one machine bind the same VIPs: any of them may answer.
        parser.error("--vip-only times one node; with --nodes 3 the routes are timed on published ports")
    sizes = [int(x) for x in args.sizes.split(",")]
    per_service = 1 if args.vip_only else 2
    raise_descriptor_limit(per_service * max(sizes) + DESCRIPTOR_MARGIN, per_service)
    builds = [("lbd", args.lbd)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"nodes: {args.nodes}; services {'on VIPs only' if args.vip_only else 'with a published port'}")
    print("| build | algorithm | services | fill s | create→routed p50 / p99 ms "
          "| change→routed p50 / p99 ms | lbd CPU per change ms (first / last node) | idle CPU ms/s "
          "| RSS per service KiB "
          "| service ls ms | join s | snapshot KiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        for algorithm in args.algorithms.split(","):
            for label, lbd in builds:
                r = run_one(lbd, n, algorithm, min(args.sample, n), not args.no_join,
                            args.nodes, args.vip_only)
                print(f"| {label} | {algorithm} | {n:,} | {r['fill_s']} | {r['create_p50_ms']} / {r['create_p99_ms']} "
                      f"| {r['change_p50_ms']} / {r['change_p99_ms']} | {r['cpu_per_change_ms']} | {r['idle_ms_per_s']} "
                      f"| {r['rss_per_service_kib']} | {r['ls_ms']} | {r['join_s']} | {r['snapshot_kib']} |",
                      flush=True)


if __name__ == "__main__":
    main()
