//! Cost of one pick for every algorithm, with 3, 10 and 100 backends, on one
//! thread and on two threads picking from the same snapshot.
//!
//! Run: `cargo bench --bench balance`. After criterion's own report the bench
//! prints a summary table: ns per pick on one thread, the combined picks per
//! second of two threads as a multiple of one thread's (the baseline, measured
//! in the same run, alternating with the two-thread runs), and whether each
//! meets its target (≤ 20 ns per pick, ≤ 40 ns for least-conn; two threads
//! ≥ 1.6× one).
//!
//! Each thread uses its own cursor lane, as each accept loop does in lbd.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use lb_config::Algorithm;
use lbmesh::balance::{Backend, BackendSet, PickContext};
use lbmesh::metrics::BackendMetrics;

const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::RoundRobin,
    Algorithm::Random,
    Algorithm::Weighted,
    Algorithm::LeastConn,
    Algorithm::Maglev,
];
const SIZES: [usize; 3] = [3, 10, 100];

fn backend_set(algorithm: Algorithm, n: usize) -> Arc<BackendSet> {
    let members = (0..n)
        .map(|i| {
            let addr = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1)),
                8080,
            );
            let backend = Arc::new(Backend::new(addr, BackendMetrics::detached()));
            // Some load for least-conn to compare, distinct weights for weighted.
            for _ in 0..(i % 4) {
                std::mem::forget(backend.track_connection());
            }
            (backend, 1 + (i % 5) as u32)
        })
        .collect();
    Arc::new(BackendSet::new(algorithm, members))
}

/// `iters` picks on one thread, varying the client address.
fn pick_loop(set: &BackendSet, lane: usize, iters: u64) {
    for i in 0..iters {
        let ctx = PickContext {
            client: IpAddr::V4(Ipv4Addr::from(i as u32)),
            lane,
        };
        black_box(set.pick(black_box(ctx)));
    }
}

fn bench(c: &mut Criterion) {
    for algorithm in ALGORITHMS {
        let mut group = c.benchmark_group(format!("pick/{algorithm}"));
        group.measurement_time(Duration::from_secs(3));
        group.warm_up_time(Duration::from_millis(500));
        for n in SIZES {
            let set = backend_set(algorithm, n);
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new("1-thread", n), &set, |b, set| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    pick_loop(set, 0, iters);
                    start.elapsed()
                })
            });
            // Each iteration is one pick on each of two threads; the time is
            // the wall time until both are done.
            group.throughput(Throughput::Elements(2));
            group.bench_with_input(BenchmarkId::new("2-threads", n), &set, |b, set| {
                b.iter_custom(|iters| timed_run(set, 2, iters))
            });
        }
        group.finish();
    }
}

/// criterion's median estimate (ns per iteration) of one benchmark; the
/// median resists the outliers a shared machine produces.
fn estimate_ns(group: &str, function: &str, n: usize) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = dir
        .join("criterion")
        .join(group.replace('/', "_"))
        .join(function)
        .join(n.to_string())
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Runs `threads` threads, each making `picks` picks on its own lane from the
/// same set, all started together; returns the slowest thread's time.
fn timed_run(set: &Arc<BackendSet>, threads: usize, picks: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|lane| {
            let set = Arc::clone(set);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                pick_loop(&set, lane, picks);
                start.elapsed()
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|worker| worker.join().expect("bench thread"))
        .max()
        .unwrap_or_default()
}

/// Combined picks per second of two threads as a multiple of one thread's.
/// One-thread and two-thread runs alternate and the median ratio is
/// reported, so drift in the shared machine's speed hits both sides alike.
/// Each run lasts about 100 ms (sized from criterion's estimate), long enough
/// that thread start-up and a stray context switch do not dominate it.
fn two_thread_scaling(set: &Arc<BackendSet>, ns_per_pick: f64) -> f64 {
    const ROUNDS: usize = 9;
    let picks = (100e6 / ns_per_pick.max(0.5)) as u64;
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let one = timed_run(set, 1, picks).as_secs_f64();
            let two = timed_run(set, 2, picks).as_secs_f64();
            2.0 * one / two
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ROUNDS / 2]
}

fn summary() {
    println!();
    println!("| algorithm | backends | ns/pick, 1 thread (criterion median) | target | 2 threads vs 1 thread, picks/s (median of 9 interleaved rounds) | target 1.6× |");
    println!("|---|---|---|---|---|---|");
    for algorithm in ALGORITHMS {
        let limit = if algorithm == Algorithm::LeastConn { 40.0 } else { 20.0 };
        for n in SIZES {
            let group = format!("pick/{algorithm}");
            let Some(one) = estimate_ns(&group, "1-thread", n) else {
                println!("| {algorithm} | {n} | (not measured in this run) | | | |");
                continue;
            };
            let scaling = two_thread_scaling(&backend_set(algorithm, n), one);
            println!(
                "| {algorithm} | {n} | {one:.2} | {} | {scaling:.2}× | {} |",
                if one <= limit { "met" } else { "MISSED" },
                if scaling >= 1.6 { "met" } else { "MISSED" },
            );
        }
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    summary();
}
