#!/usr/bin/env python3
"""lbmesh UDP load test: request/response rate and latency of one UDP echo
backend reached directly, through lbd (a `protocol = "udp"` port) and
through nginx (`stream`, `listen ... udp reuseport`), measured in one run.

Each round runs the targets in a rotated order; every run is `--clients`
client threads, each one flow (its own socket) sending `--size` bytes and
waiting for the echo before the next (lockstep), for `--duration` seconds.
The load generator and the echo backend are `loadtest/udp_load.rs` (std
only, built here with `rustc -O`). lbd and nginx both keep one upstream
socket per client flow (nginx: no `proxy_responses`, `proxy_timeout 60s`;
lbd: its sessions, `udp_idle_timeout` 60 s) and run two workers.

Prints a Markdown table of medians with (min-max) spreads and the ratios
lbd/nginx and lbd/direct, then the issue's target: lbd's rate at least
nginx's and its p99 at most 1.1 x nginx's (reported, not enforced: the
machine's noise decides a close call; run more rounds).

Needs: nginx with the stream module, rustc, python3.

  python3 loadtest/udp.py --lbd target/release/lbd
  python3 loadtest/udp.py --lbd target/debug/lbd --quick    # smoke, ~15 s
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ["direct", "lbd", "nginx"]
# fixed-port-ok: all on 127.0.0.1; each is checked free before the run.
PORTS = {"direct": 15353, "lbd": 15354, "nginx": 15355}  # fixed-port-ok
LBD_API = 19902  # fixed-port-ok
THREADS = 2
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def udp_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def tcp_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def echoes(port, timeout=20.0):
    """Whether a datagram sent to the port comes back, within `timeout`."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(b"probe-00", ("127.0.0.1", port))
            try:
                if s.recv(64) == b"probe-00":
                    return True
            except OSError:
                pass
    return False


def configs(work):
    (work / "nginx-udp.conf").write_text(f"""
load_module {STREAM_MODULE};
user root;
worker_processes {THREADS};
daemon off;
pid {work}/nginx-udp.pid;
error_log {work}/nginx-udp-error.log warn;
events {{ worker_connections 20000; }}
stream {{
    proxy_timeout 60s;
    server {{ listen 127.0.0.1:{PORTS['nginx']} udp reuseport; proxy_pass 127.0.0.1:{PORTS['direct']}; }}
}}
""")
    (work / "lbd-udp.toml").write_text(f"""
[node]
name = "loadtest-udp"
api_addr = "127.0.0.1:{LBD_API}"
shutdown_grace = "1s"

[[service]]
name = "udp"
listen = ["127.0.0.1"]
ports = [{{ published = {PORTS['lbd']}, target = {PORTS['direct']}, protocol = "udp" }}]
endpoints = [{{ address = "127.0.0.1:{PORTS['direct']}" }}]
udp_idle_timeout = "60s"
""")


def run_load(tool, port, clients, duration, size):
    out = subprocess.run(
        [tool, "load", f"127.0.0.1:{port}", str(clients), str(duration), str(size)],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        raise SystemExit(f"loadtest: no result from udp_load: {out}")
    return json.loads(m.group(1))


def spread(values, fmt):
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lbd", required=True, help="the lbd binary (a release build for figures)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--clients", type=int, default=32, help="client flows (threads) per run")
    parser.add_argument("--size", type=int, default=64, help="bytes per datagram")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 3
    if not shutil.which("nginx") or not Path(STREAM_MODULE).exists() or not shutil.which("rustc"):
        raise SystemExit("loadtest: needs nginx with the stream module and rustc")
    for target, port in PORTS.items():
        if not udp_free(port):
            raise SystemExit(f"loadtest: udp port 127.0.0.1:{port} ({target}) is in use")
    if not tcp_free(LBD_API):
        raise SystemExit(f"loadtest: tcp port 127.0.0.1:{LBD_API} is in use")

    work = Path(tempfile.mkdtemp(prefix="lbmesh-udp-loadtest-"))
    tool = work / "udp_load"
    subprocess.run(["rustc", "-O", "--edition", "2021", "-o", str(tool), str(HERE / "udp_load.rs")], check=True)
    configs(work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    children = []

    def start(name, argv):
        out = open(work / f"{name}.log", "w")
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        children.append(child)
        return child

    results = {t: {"rate": [], "p50": [], "p99": [], "lost": []} for t in TARGETS}
    try:
        start("echo", [str(tool), "echo", f"127.0.0.1:{PORTS['direct']}", str(THREADS)])
        start("lbd", [args.lbd, "--config", str(work / "lbd-udp.toml"), "--threads", str(THREADS)])
        start("nginx", ["nginx", "-c", str(work / "nginx-udp.conf")])
        for target, port in PORTS.items():
            if not echoes(port):
                raise SystemExit(f"loadtest: {target} does not echo; logs in {work}")
        for round_ in range(args.rounds):
            order = TARGETS[round_ % len(TARGETS):] + TARGETS[:round_ % len(TARGETS)]
            for target in order:
                r = run_load(str(tool), PORTS[target], args.clients, args.duration, args.size)
                log(f"round {round_ + 1} {target}: {r}")
                results[target]["rate"].append(r["rate"])
                results[target]["p50"].append(r["p50_us"])
                results[target]["p99"].append(r["p99_us"])
                results[target]["lost"].append(r["lost"])
    finally:
        for child in children:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)

    print(f"UDP request/response, {args.clients} flows, {args.size} B, {args.rounds} x {args.duration} s, "
          f"{THREADS} workers each\n")
    print("| target | req/s | p50 µs | p99 µs | lost |")
    print("|---|---|---|---|---|")
    for t in TARGETS:
        r = results[t]
        print(f"| {t} | {spread(r['rate'], lambda v: f'{v:,.0f}')} | {spread(r['p50'], str)} | "
              f"{spread(r['p99'], str)} | {sum(r['lost'])} |")
    med = {t: {k: statistics.median(v) for k, v in results[t].items()} for t in TARGETS}
    rate_ratio = med["lbd"]["rate"] / med["nginx"]["rate"]
    p99_ratio = med["lbd"]["p99"] / max(med["nginx"]["p99"], 1)
    print(f"\nlbd/nginx: rate {rate_ratio:.2f}, p99 {p99_ratio:.2f}; "
          f"lbd/direct: rate {med['lbd']['rate'] / med['direct']['rate']:.2f}")
    met = rate_ratio >= 1.0 and p99_ratio <= 1.1
    print(f"target (rate >= nginx, p99 <= 1.1 x nginx): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
