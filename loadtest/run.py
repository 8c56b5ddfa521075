#!/usr/bin/env python3
"""lbmesh load test: the same backend reached directly, through lbd, through
HAProxy (mode tcp) and through nginx (stream), measured in one run.

Scenarios (each target, interleaved, `--rounds` times):
  keepalive   wrk, 64 keep-alive connections, small responses: req/s, p50/p99/p99.9
  close       wrk with `Connection: close`: new connections per second, p99
  bulk        iperf3 through each proxy, upload and download: Gbit/s
  cpu         CPU-seconds each proxy used per 100k keep-alive requests and
              per GiB of bulk transfer
  idle        N idle proxied connections (after one small exchange each):
              user-space RSS delta per connection and kernel socket memory
Prints Markdown tables of medians with (min–max) spreads, and the ratios
lbd/direct and lbd/HAProxy.

Needs: wrk, nginx with the stream module, haproxy, iperf3, python3 (Debian:
`apt-get install -y wrk nginx-light libnginx-mod-stream haproxy iperf3`).

  python3 loadtest/run.py                 # full run (release lbd is built first)
  python3 loadtest/run.py --quick --lbd target/debug/lbd   # CI smoke, < 2 min
  python3 loadtest/run.py --lbd NEW --baseline-lbd OLD     # a change, before/after

With --baseline-lbd a fifth target, "lbd-base", runs a second lbd binary in
the same rounds, so a change is judged against its baseline under the same
noise (the ratio row lbd/lbd-base).

With --access-log a target "lbd-log" runs the same lbd binary with
`access_log = true` on its services (lines to a file in the work dir), in
the same rounds, so the log's cost shows as the ratio row lbd-log/lbd; the
lines written and dropped are printed after the tables.

With --quick the harness judges nothing about speed; it exits non-zero if
any request or transfer through lbd failed. Every wait is bounded.
"""
import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

TARGETS = ["direct", "lbd", "haproxy", "nginx"]
PROXIES = ["lbd", "haproxy", "nginx"]
# The optional second lbd (--baseline-lbd).
BASELINE = "lbd-base"
# The optional lbd with the access log on (--access-log).
LOGGED = "lbd-log"
# One port per (scenario, target); all on 127.0.0.1. fixed-port-ok: the
# harness checks each is free before it starts and fails if one is taken.
HTTP = {"direct": 18080, "lbd": 18081, "haproxy": 18082, "nginx": 18083, BASELINE: 18084, LOGGED: 18085}  # fixed-port-ok
BULK = {"direct": 15201, "lbd": 15202, "haproxy": 15203, "nginx": 15204, BASELINE: 15205, LOGGED: 15206}  # fixed-port-ok
IDLE = {"direct": 17000, "lbd": 17001, "haproxy": 17002, "nginx": 17003, BASELINE: 17004, LOGGED: 17005}  # fixed-port-ok
LBD_API = {"lbd": 19900, BASELINE: 19901, LOGGED: 19902}  # fixed-port-ok
THREADS = 2  # each proxy gets the same number of threads / workers
# Descriptors each process may open: the hard limit, which an unprivileged
# sandbox may not raise (20,000 on the project's CI machines). A proxied
# connection costs a proxy two, so the idle scenario holds at most
# (limit - 2,000) / 2 connections.
FD_LIMIT = 20000
BODY = b"x" * 64  # the "small response"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Failure(Exception):
    pass


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise Failure(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Processes:
    """Children started by the harness, stopped at exit."""

    def __init__(self, work):
        self.work = work
        self.children = {}

    def start(self, name, argv):
        log_file = open(self.work / f"{name}.log", "w")
        self.children[name] = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self.children[name]

    def pids(self, name):
        """The process and its descendants (nginx workers)."""
        root = self.children[name].pid
        pids = [root]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == root:
                pids.append(int(stat.parent.name))
        return pids

    def cpu_seconds(self, name):
        total = 0
        for pid in self.pids(name):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / CLK_TCK

    def rss_kib(self, name):
        total = 0
        for pid in self.pids(name):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            total += int(m.group(1)) if m else 0
        return total

    def check_alive(self):
        for name, child in self.children.items():
            if child.poll() is not None:
                tail = (self.work / f"{name}.log").read_text()[-2000:]
                raise Failure(f"{name} exited with {child.returncode}:\n{tail}")

    def stop_all(self):
        for child in self.children.values():
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)


def write_configs(work):
    www = work / "www"
    www.mkdir()
    (www / "index.html").write_bytes(BODY)
    (work / "backend.conf").write_text(f"""
user root;
worker_processes {THREADS};
worker_rlimit_nofile {FD_LIMIT};
daemon off;
pid {work}/backend.pid;
error_log {work}/backend-error.log warn;
events {{ worker_connections {FD_LIMIT - 1000}; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{HTTP['direct']} backlog=4096;
        root {www};
    }}
}}
""")
    servers = []
    for scenario in (HTTP, BULK, IDLE):
        servers.append(
            f"    server {{ listen 127.0.0.1:{scenario['nginx']} backlog=4096; "
            f"proxy_pass 127.0.0.1:{scenario['direct']}; }}"
        )
    servers_text = "\n".join(servers)
    (work / "nginx-stream.conf").write_text(f"""
load_module {STREAM_MODULE};
user root;
worker_processes {THREADS};
worker_rlimit_nofile {FD_LIMIT};
daemon off;
pid {work}/nginx-stream.pid;
error_log {work}/nginx-stream-error.log warn;
events {{ worker_connections {FD_LIMIT - 1000}; }}
stream {{
    proxy_connect_timeout 3s;
    proxy_timeout 1h;
{servers_text}
}}
""")
    frontends = []
    for label, scenario in (("http", HTTP), ("bulk", BULK), ("idle", IDLE)):
        frontends.append(f"""
frontend fe_{label}
    bind 127.0.0.1:{scenario['haproxy']}
    default_backend be_{label}
backend be_{label}
    server s1 127.0.0.1:{scenario['direct']}
""")
    (work / "haproxy.cfg").write_text(f"""
global
    nbthread {THREADS}
    maxconn {FD_LIMIT // 2 - 200}
defaults
    mode tcp
    timeout connect 3s
    timeout client 1h
    timeout server 1h
{''.join(frontends)}
""")
    for lbd in LBD_API:
        services = []
        for label, scenario in (("http", HTTP), ("bulk", BULK), ("idle", IDLE)):
            services.append(f"""
[[service]]
name = "{label}"
listen = ["127.0.0.1"]
ports = [{{ published = {scenario[lbd]} }}]
endpoints = [{{ address = "127.0.0.1:{scenario['direct']}" }}]
connect_timeout = "3s"
idle_timeout = "1h"
max_connections = 200000
access_log = {"true" if lbd == LOGGED else "false"}
""")
        (work / f"{lbd}.toml").write_text(f"""
[node]
name = "loadtest"
api_addr = "127.0.0.1:{LBD_API[lbd]}"
shutdown_grace = "2s"
{''.join(services)}
""")


def parse_wrk(output):
    m = re.search(r"^RESULT (.*)$", output, re.M)
    if not m:
        raise Failure(f"wrk printed no RESULT line:\n{output[-2000:]}")
    values = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    values["errors"] = sum(values[k] for k in ("connect", "read", "write", "status", "timeout"))
    values["rps"] = values["requests"] / (values["duration_us"] / 1e6)
    return values


def run_wrk(port, duration, connections, close):
    argv = [
        "wrk", f"-t{THREADS}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
        "-s", str(HERE / "report.lua"),
    ]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}/index.html")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise Failure(f"wrk failed ({done.returncode}): {done.stderr}")
    return parse_wrk(done.stdout)


def run_iperf(port, size, reverse):
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", size, "-J"]
    if reverse:
        argv.append("-R")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise Failure(f"iperf3 printed no JSON ({done.returncode}): {done.stderr}{done.stdout[-500:]}")
    if "error" in report:
        raise Failure(f"iperf3 error: {report['error']}")
    end = report["end"]
    received = end["sum_received"]["bytes"]
    sent = end["sum_sent"]["bytes"]
    # The iperf3 server stops counting when the control connection says the
    # test is over, which can overtake the last few MB still in the socket
    # buffers on either side of a proxy, so received may trail sent slightly
    # (byte-exact delivery is covered by the integration tests). A transfer
    # that breaks makes iperf3 report an error, which fails the run above.
    if received == 0 or sent == 0:
        raise Failure("iperf3 moved no data")
    return end["sum_received"]["bits_per_second"] / 1e9


def parse_size(text):
    """iperf3's -n syntax: a number with an optional K, M or G suffix."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    suffix = text[-1].upper()
    return int(float(text[:-1]) * units[suffix]) if suffix in units else int(text)


def sockstat_pages():
    m = re.search(r"^TCP:.* mem (\d+)", Path("/proc/net/sockstat").read_text(), re.M)
    return int(m.group(1)) if m else 0


def idle_memory(procs, target, count):
    """RSS and kernel socket memory per idle proxied connection."""
    time.sleep(0.5)
    rss_before = procs.rss_kib(target)
    kernel_before = sockstat_pages()
    holder = subprocess.Popen(
        [sys.executable, str(HERE / "idle.py"), "hold", "127.0.0.1", str(IDLE[target]), str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and not line.startswith("READY"):
            line = holder.stdout.readline()
            if not line and holder.poll() is not None:
                raise Failure(f"idle client through {target} failed ({holder.returncode})")
        if not line.startswith("READY"):
            raise Failure(f"idle client through {target} not ready in time")
        time.sleep(1.0)
        rss_after = procs.rss_kib(target)
        kernel_after = sockstat_pages()
    finally:
        if holder.stdin:
            holder.stdin.close()
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
    return {
        "rss_per_conn_kib": (rss_after - rss_before) / count,
        # Kernel memory counts both sockets of the proxy and the client's and
        # backend's sockets; it is reported per proxied connection.
        "kernel_per_conn_kib": (kernel_after - kernel_before) * PAGE / 1024 / count,
    }


def median_spread(values, fmt):
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def ratio(results, metric, a, b):
    va, vb = results.get(a, {}).get(metric), results.get(b, {}).get(metric)
    if not va or not vb:
        return "n/a"
    return f"{statistics.median(va) / statistics.median(vb):.2f}"


def paired_ratio(results, metric, a, b, higher_is_better):
    """Target a over target b round by round: the median and spread of the
    per-round ratios, and in how many rounds a did better. Both ran in the
    same minute of each round, so this pairs away much of the VM's drift."""
    va, vb = results.get(a, {}).get(metric), results.get(b, {}).get(metric)
    if not va or not vb or len(va) != len(vb):
        return "n/a"
    ratios = [x / y for x, y in zip(va, vb) if y]
    if not ratios:
        return "n/a"
    better = sum(1 for r in ratios if (r > 1 if higher_is_better else r < 1))
    return f"{median_spread(ratios, '{:.2f}')}, {better}/{len(ratios)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI smoke: short runs, fail on any lbd error")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--bulk", default="1G", help="iperf3 bytes per transfer")
    parser.add_argument("--idle", type=int, default=10000, help="idle connections held")
    parser.add_argument("--lbd", help="lbd binary (default: build target/release/lbd)")
    parser.add_argument("--baseline-lbd", help="a second lbd binary measured in the same rounds as lbd-base")
    parser.add_argument("--access-log", action="store_true",
                        help="also measure lbd with the access log on, as lbd-log")
    parser.add_argument(
        "--scenarios", default="keepalive,close,bulk,idle",
        help="comma-separated subset of keepalive,close,bulk,idle (cpu comes with keepalive)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.bulk, args.idle = 1, 3, "64M", 500
    scenarios = set(args.scenarios.split(","))
    unknown = scenarios - {"keepalive", "close", "bulk", "idle"}
    if unknown:
        raise SystemExit(f"loadtest: unknown scenario(s): {', '.join(sorted(unknown))}")

    missing = [t for t in ("wrk", "nginx", "haproxy", "iperf3") if not shutil.which(t)]
    if missing or not Path(STREAM_MODULE).exists():
        raise SystemExit(
            f"loadtest: missing {', '.join(missing) or STREAM_MODULE}; install with "
            "apt-get install -y wrk nginx-light libnginx-mod-stream haproxy iperf3"
        )
    if args.baseline_lbd:
        if not os.access(args.baseline_lbd, os.X_OK):
            raise SystemExit(f"loadtest: --baseline-lbd {args.baseline_lbd} is not an executable file")
        TARGETS.append(BASELINE)
        PROXIES.append(BASELINE)
    if args.access_log:
        TARGETS.append(LOGGED)
        PROXIES.append(LOGGED)
    for port in [*HTTP.values(), *BULK.values(), *IDLE.values(), *LBD_API.values()]:
        if not port_free(port):
            raise SystemExit(f"loadtest: port 127.0.0.1:{port} is in use")

    lbd = args.lbd
    if not lbd:
        subprocess.run(["cargo", "build", "--release", "--bin", "lbd"], cwd=ROOT, check=True)
        lbd = str(ROOT / "target" / "release" / "lbd")

    global FD_LIMIT
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    FD_LIMIT = 200000 if hard == resource.RLIM_INFINITY else min(200000, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))
    except (ValueError, OSError):
        FD_LIMIT = soft
    most_idle = (FD_LIMIT - 2000) // 2
    if args.idle > most_idle:
        log(f"loadtest: the descriptor limit is {FD_LIMIT}; holding {most_idle} idle connections instead of {args.idle}")
        args.idle = most_idle

    # SIGTERM (a CI timeout) unwinds like Ctrl-C, through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="lbmesh-loadtest-"))
    os.chmod(work, 0o755)
    write_configs(work)
    procs = Processes(work)
    results = {t: {} for t in TARGETS}
    lbd_failures = []

    def record(target, metric, value):
        results[target].setdefault(metric, []).append(value)

    try:
        procs.start("backend", ["nginx", "-p", str(work), "-c", str(work / "backend.conf")])
        procs.start("iperf3", ["iperf3", "-s", "-p", str(BULK["direct"])])
        procs.start("idle-backend", [sys.executable, str(HERE / "idle.py"), "serve", str(IDLE["direct"])])
        procs.start("lbd", [lbd, "--config", str(work / "lbd.toml"), "--threads", str(THREADS)])
        if args.baseline_lbd:
            procs.start(BASELINE, [args.baseline_lbd, "--config", str(work / f"{BASELINE}.toml"),
                                   "--threads", str(THREADS)])
        if args.access_log:
            procs.start(LOGGED, [lbd, "--config", str(work / f"{LOGGED}.toml"),
                                 "--threads", str(THREADS), "--access-log", str(work / "access.log")])
        procs.start("haproxy", ["haproxy", "-db", "-f", str(work / "haproxy.cfg")])
        procs.start("nginx", ["nginx", "-p", str(work), "-c", str(work / "nginx-stream.conf")])
        for scenario in (HTTP, BULK, IDLE):
            for target in TARGETS:
                wait_port(scenario[target])
        procs.check_alive()
        log(f"loadtest: all up in {work}")

        for round_no in range(args.rounds):
            # Rotate the order each round so no target always runs first.
            shift = round_no % len(TARGETS)
            order = TARGETS[shift:] + TARGETS[:shift]
            for target in order:
                port = HTTP[target]
                name = target if target != "direct" else "backend"
                errors = {}
                if "keepalive" in scenarios:
                    cpu_before = procs.cpu_seconds(name)
                    r = run_wrk(port, args.duration, args.connections, close=False)
                    cpu = procs.cpu_seconds(name) - cpu_before
                    log(f"round {round_no + 1} {target:8} keepalive {r['rps']:10.0f} req/s p99 {r['p99_us']}us errors {r['errors']}")
                    record(target, "ka_rps", r["rps"])
                    record(target, "ka_p50", r["p50_us"] / 1000)
                    record(target, "ka_p99", r["p99_us"] / 1000)
                    record(target, "ka_p999", r["p999_us"] / 1000)
                    record(target, "cpu_per_100k", cpu / r["requests"] * 100_000)
                    errors["keepalive"] = r["errors"]
                if "close" in scenarios:
                    c = run_wrk(port, args.duration, args.connections, close=True)
                    log(f"round {round_no + 1} {target:8} close     {c['rps']:10.0f} conn/s p99 {c['p99_us']}us errors {c['errors']}")
                    record(target, "cc_rps", c["rps"])
                    record(target, "cc_p99", c["p99_us"] / 1000)
                    errors["close"] = c["errors"]
                if "bulk" in scenarios:
                    cpu_name = target if target != "direct" else "iperf3"
                    cpu_before = procs.cpu_seconds(cpu_name)
                    up = run_iperf(BULK[target], args.bulk, reverse=False)
                    down = run_iperf(BULK[target], args.bulk, reverse=True)
                    gib = 2 * parse_size(args.bulk) / 2**30
                    record(target, "bulk_cpu_per_gib", (procs.cpu_seconds(cpu_name) - cpu_before) / gib)
                    log(f"round {round_no + 1} {target:8} bulk      up {up:.2f} down {down:.2f} Gbit/s")
                    record(target, "bulk_up", up)
                    record(target, "bulk_down", down)
                if target in LBD_API and any(errors.values()):
                    lbd_failures.append(f"round {round_no + 1} {target}: errors {errors}")
                procs.check_alive()

        for target in PROXIES if "idle" in scenarios else []:
            m = idle_memory(procs, target, args.idle)
            log(f"idle {target:8} {m['rss_per_conn_kib']:.2f} KiB/conn user, {m['kernel_per_conn_kib']:.2f} KiB/conn kernel")
            record(target, "idle_rss", m["rss_per_conn_kib"])
            record(target, "idle_kernel", m["kernel_per_conn_kib"])
            procs.check_alive()
        if args.access_log:
            access_counts = access_log_counts(work)
    except (Failure, subprocess.TimeoutExpired, OSError) as error:
        raise SystemExit(f"loadtest: {error}") from error
    finally:
        # Whatever ended the run (a child that would not start, a signal, a
        # bug here), nothing it started outlives it.
        procs.stop_all()

    print_tables(results, args)
    if args.access_log:
        print(f"\nlbd-log access log: {access_counts}")
    if lbd_failures:
        raise SystemExit("loadtest: requests through lbd failed: " + "; ".join(lbd_failures))
    print("\nloadtest: no request through lbd failed")


def access_log_counts(work):
    """lbd-log's access log lines written and dropped (its /metrics), and
    the lines in the file; the file is removed (it can be large)."""
    time.sleep(1)  # the writer flushes whenever its queue runs empty
    with socket.create_connection(("127.0.0.1", LBD_API[LOGGED]), timeout=5) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n")
        page = b""
        while chunk := conn.recv(65536):
            page += chunk
    counts = {}
    for name in ("lbmesh_access_log_lines_total", "lbmesh_access_log_dropped_total"):
        m = re.search(rf"^{name} (\S+)$", page.decode(), re.M)
        counts[name] = float(m.group(1)) if m else None
    path = work / "access.log"
    with open(path, "rb") as f:
        counts["lines in the file"] = sum(1 for _ in f)
    path.unlink()
    return counts


def print_tables(results, args):
    cpu = os.cpu_count()
    print(f"\n### lbmesh load test, {time.strftime('%Y-%m-%d')}, {cpu} cores, "
          f"{args.rounds} round(s), wrk -t{THREADS} -c{args.connections} -d{args.duration}s, "
          f"bulk {args.bulk}, {args.idle} idle connections\n")
    print("| target | keep-alive req/s | p50 ms | p99 ms | p99.9 ms | Connection: close conn/s | close p99 ms | bulk up Gbit/s | bulk down Gbit/s | CPU-s / 100k req | bulk CPU-s / GiB | idle KiB/conn (user) | idle KiB/conn (kernel) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in TARGETS:
        r = results[t]
        print("| " + " | ".join([
            t,
            median_spread(r.get("ka_rps", []), "{:.0f}"),
            median_spread(r.get("ka_p50", []), "{:.2f}"),
            median_spread(r.get("ka_p99", []), "{:.2f}"),
            median_spread(r.get("ka_p999", []), "{:.2f}"),
            median_spread(r.get("cc_rps", []), "{:.0f}"),
            median_spread(r.get("cc_p99", []), "{:.2f}"),
            median_spread(r.get("bulk_up", []), "{:.2f}"),
            median_spread(r.get("bulk_down", []), "{:.2f}"),
            median_spread(r.get("cpu_per_100k", []), "{:.2f}") if t != "direct" else "(backend) " + median_spread(r.get("cpu_per_100k", []), "{:.2f}"),
            median_spread(r.get("bulk_cpu_per_gib", []), "{:.2f}") if t != "direct" else "(iperf3) " + median_spread(r.get("bulk_cpu_per_gib", []), "{:.2f}"),
            median_spread(r.get("idle_rss", []), "{:.2f}"),
            median_spread(r.get("idle_kernel", []), "{:.2f}"),
        ]) + " |")
    print("\n| ratio (medians) | keep-alive req/s | p99 | Connection: close conn/s | bulk up | bulk down | CPU / 100k req | bulk CPU / GiB | idle user KiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    pairs = [("lbd", "direct"), ("lbd", "haproxy"), ("lbd", "nginx")]
    if BASELINE in TARGETS:
        pairs.append(("lbd", BASELINE))
    if LOGGED in TARGETS:
        pairs.append((LOGGED, "lbd"))
    for a, b in pairs:
        print(f"| {a}/{b} | " + " | ".join([
            ratio(results, "ka_rps", a, b),
            ratio(results, "ka_p99", a, b),
            ratio(results, "cc_rps", a, b),
            ratio(results, "bulk_up", a, b),
            ratio(results, "bulk_down", a, b),
            ratio(results, "cpu_per_100k", a, b) if b != "direct" else "n/a",
            ratio(results, "bulk_cpu_per_gib", a, b) if b != "direct" else "n/a",
            ratio(results, "idle_rss", a, b) if b != "direct" else "n/a",
        ]) + " |")
    print("\n| ratio per round: median (min–max), rounds lbd did better | keep-alive req/s | p99 | Connection: close conn/s | close p99 | bulk up | bulk down | CPU / 100k req |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in pairs[1:]:
        print(f"| {a}/{b} | " + " | ".join([
            paired_ratio(results, "ka_rps", a, b, True),
            paired_ratio(results, "ka_p99", a, b, False),
            paired_ratio(results, "cc_rps", a, b, True),
            paired_ratio(results, "cc_p99", a, b, False),
            paired_ratio(results, "bulk_up", a, b, True),
            paired_ratio(results, "bulk_down", a, b, True),
            paired_ratio(results, "cpu_per_100k", a, b, False),
        ]) + " |")


if __name__ == "__main__":
    main()
