//! Cost of validating one service spec as its endpoint count grows: 64,
//! 512 and 4,096 static endpoints (the limit), with 1 and with 64 published
//! ports (the limit of a new spec), so the 114 KB spec shape (many
//! ports × 4,096 endpoints) is the largest case.
//!
//! Run: `cargo bench --bench validate` (`LBMESH_BENCH_SUMMARY_ONLY=1` skips
//! criterion's detailed report). Criterion reports endpoints per second
//! (equal rates at every size mean linear cost). The bench ends with a
//! summary, for each port count: the cost of one more endpoint between 512
//! and 4,096 endpoints as a multiple of its cost between 64 and 512 (the
//! baseline, measured in the same run, alternating). Linear checks keep it
//! near 1 (target ≤ 2); the pairwise duplicate check this replaced (every
//! endpoint against every one before it, on every port) makes it about 8.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use lb_config::{EndpointSpec, PortSpec, ServiceSpec, MAX_ENDPOINTS, MAX_PORTS};

const ENDPOINTS: [usize; 3] = [64, 512, MAX_ENDPOINTS];
const PORTS: [usize; 2] = [1, MAX_PORTS];
/// Largest acceptable ratio of per-endpoint cost, 4,096 against 64.
const TARGET_RATIO: f64 = 2.0;

/// A valid spec with `ports` published ports and `endpoints` distinct bare
/// IPs (so every port's target applies to each).
fn spec(ports: usize, endpoints: usize) -> ServiceSpec {
    ServiceSpec {
        name: "big".to_owned(),
        ports: (0..ports)
            .map(|i| PortSpec {
                published: 10_000 + i as i64,
                target: Some(20_000 + i as i64),
                protocol: None,
            })
            .collect(),
        endpoints: (0..endpoints)
            .map(|i| EndpointSpec {
                address: format!("10.{}.{}.{}", i / 62_500, (i / 250) % 250, i % 250 + 1),
                weight: None,
            })
            .collect(),
        ..ServiceSpec::default()
    }
}

fn criterion_benches(c: &mut Criterion) {
    for ports in PORTS {
        let mut group = c.benchmark_group(format!("validate/{ports}-ports"));
        for endpoints in ENDPOINTS {
            let spec = spec(ports, endpoints);
            assert!(spec.validate().is_ok(), "the bench spec must be valid");
            group.throughput(Throughput::Elements(endpoints as u64));
            group.bench_with_input(BenchmarkId::from_parameter(endpoints), &spec, |b, spec| {
                b.iter(|| black_box(spec.validate()))
            });
        }
        group.finish();
    }
}

/// ns per validation of `spec`, over `rounds` validations.
fn time(spec: &ServiceSpec, rounds: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(black_box(spec).validate().is_ok());
    }
    started.elapsed().as_nanos() as f64 / f64::from(rounds)
}

fn summary() {
    let [small, middle, large] = ENDPOINTS;
    println!(
        "\nvalidation: ns per added endpoint, {middle}→{large} against {small}→{middle} (same run):"
    );
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>12} {:>12} {:>7}  target ≤ {TARGET_RATIO}",
        "ports", "µs @64", "µs @512", "µs @4096", "ns/ep low", "ns/ep high", "ratio"
    );
    for ports in PORTS {
        let specs = ENDPOINTS.map(|n| spec(ports, n));
        for spec in &specs {
            assert!(spec.validate().is_ok(), "the bench spec must be valid");
        }
        let mut runs: [Vec<f64>; 3] = Default::default();
        // Alternate so every size sees the same machine load.
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..11 {
            for (spec, run) in specs.iter().zip(runs.iter_mut()) {
                let rounds = (40_960 / spec.endpoints.len()) as u32;
                run.push(time(spec, rounds));
            }
            if Instant::now() > deadline {
                break;
            }
        }
        let [a, b, c] = runs.map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        });
        // The marginal cost of an endpoint in each range: equal when the
        // cost is linear, 8× apart (4096−512 against 512−64 endpoints on
        // average) when it is quadratic.
        let low = (b - a) / (middle - small) as f64;
        let high = (c - b) / (large - middle) as f64;
        let ratio = high / low;
        let verdict = if ratio <= TARGET_RATIO {
            "ok"
        } else {
            "MISSED"
        };
        println!(
            "{ports:>6} {:>10.1} {:>10.1} {:>10.1} {low:>12.1} {high:>12.1} {ratio:>7.2}  {verdict}",
            a / 1e3,
            b / 1e3,
            c / 1e3
        );
    }
}

fn main() {
    if std::env::var_os("LBMESH_BENCH_SUMMARY_ONLY").is_none() {
        let mut c = Criterion::default()
            .configure_from_args()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        criterion_benches(&mut c);
        c.final_summary();
    }
    summary();
}
