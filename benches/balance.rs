//! Cost of one pick for every algorithm, with 3, 10 and 100 backends, on one
//! thread and on two threads picking from the same snapshot.
//!
//! Run: `cargo bench --bench balance` (`LBMESH_BENCH_SUMMARY_ONLY=1` skips
//! criterion's detailed report). The bench ends with a summary table: ns per
//! pick on one thread, the combined picks per second of two threads as a
//! multiple of one thread's (the baseline, measured in the same run,
//! alternating with the two-thread runs), and whether each meets its target
//! (≤ 20 ns per pick, ≤ 40 ns for least-conn; two threads ≥ 1.6× one).
//!
//! Each thread uses its own cursor lane, as each accept loop does in lbd.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use lb_config::Algorithm;
use lbmesh_proxy::balance::{Backend, BackendSet, PickContext};
use lbmesh_proxy::metrics::BackendMetrics;

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

/// Runs `threads` threads, each making `picks` picks on its own lane from the
/// same set, all started together; returns the slowest thread's time. Thread
/// i is pinned to core i when the machine has enough cores, so the scheduler
/// cannot start both on one core and skew the comparison.
fn timed_run(set: &Arc<BackendSet>, threads: usize, picks: u64) -> Duration {
    let set = Arc::clone(set);
    run_pinned(threads, move |lane| pick_loop(&set, lane, picks))
}

/// Runs `work(i)` on `threads` threads started together, thread i pinned to
/// core i where there is one; returns the slowest thread's own time.
fn run_pinned<F>(threads: usize, work: F) -> Duration
where
    F: Fn(usize) + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let barrier = Arc::new(Barrier::new(threads));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let work = Arc::clone(&work);
            let barrier = Arc::clone(&barrier);
            let core = cores.get(i).copied();
            std::thread::spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                barrier.wait();
                let start = Instant::now();
                work(i);
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

/// One config measured apart from criterion, for the summary: one-thread and
/// two-thread runs alternate (15 rounds of about 100 ms each) so drift in the
/// shared machine's speed hits both alike. Returns the median ns per pick on
/// one thread and the median of (two threads' combined picks/s ÷ one
/// thread's).
fn interleaved(set: &Arc<BackendSet>) -> (f64, f64) {
    const ROUNDS: usize = 15;
    // Size the runs from a short probe so each lasts about 100 ms.
    let probe = timed_run(set, 1, 1_000_000).as_secs_f64() / 1e6;
    let picks = (0.1 / probe.max(1e-10)) as u64;
    let mut per_pick = Vec::with_capacity(ROUNDS);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let one = timed_run(set, 1, picks).as_secs_f64();
        let two = timed_run(set, 2, picks).as_secs_f64();
        per_pick.push(one / picks as f64 * 1e9);
        ratios.push(2.0 * one / two);
    }
    per_pick.sort_by(f64::total_cmp);
    ratios.sort_by(f64::total_cmp);
    (per_pick[ROUNDS / 2], ratios[ROUNDS / 2])
}

/// The same interleaved measurement for a loop that shares nothing between
/// threads (xorshift on a local): the best scaling this machine offers, as
/// the reference for the pickers' scaling.
fn shared_nothing_scaling() -> f64 {
    const ROUNDS: usize = 9;
    const STEPS: u64 = 50_000_000;
    let run = |threads: usize| {
        run_pinned(threads, |i| {
            let mut x = black_box(0x9e37_79b9_7f4a_7c15u64 + i as u64);
            for _ in 0..STEPS {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            black_box(x);
        })
        .as_secs_f64()
    };
    let mut ratios: Vec<f64> = (0..ROUNDS).map(|_| 2.0 * run(1) / run(2)).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ROUNDS / 2]
}

fn summary() {
    println!();
    println!(
        "Reference: a loop that shares nothing scales {:.2}× on two threads on this machine.",
        shared_nothing_scaling()
    );
    println!();
    println!("| algorithm | backends | ns/pick, 1 thread | target | 2 threads vs 1 thread, picks/s | target 1.6× |");
    println!("|---|---|---|---|---|---|");
    for algorithm in ALGORITHMS {
        let limit = if algorithm == Algorithm::LeastConn {
            40.0
        } else {
            20.0
        };
        for n in SIZES {
            let (one, scaling) = interleaved(&backend_set(algorithm, n));
            println!(
                "| {algorithm} | {n} | {one:.2} | {} | {scaling:.2}× | {} |",
                if one <= limit { "met" } else { "MISSED" },
                if scaling >= 1.6 { "met" } else { "MISSED" },
            );
        }
    }
}

fn main() {
    // LBMESH_BENCH_SUMMARY_ONLY=1 skips criterion's detailed runs.
    if std::env::var_os("LBMESH_BENCH_SUMMARY_ONLY").is_none() {
        let mut criterion = Criterion::default().configure_from_args();
        bench(&mut criterion);
        criterion.final_summary();
    }
    summary();
}
