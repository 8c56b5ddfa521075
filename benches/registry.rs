//! Registry write benchmark: committed writes per second and commit latency
//! on a 3-node loopback cluster, with a 1-node cluster measured in the same
//! run as the baseline (the cost of replication is the difference).
//!
//! Run: `cargo bench --bench registry`. Every write is on disk (redb,
//! fsync) on a majority before it is acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_config::{PortSpec, ServiceSpec};
use lbmesh_tls::{CertRole, ClusterCa};
use raft_state::registry::{NodeOptions, RegistryNode, Timing};
use raft_state::state::{Command, Outcome};
use tokio::net::TcpListener;

const SEQUENTIAL_WRITES: usize = 300;
const CONCURRENT_WRITES: usize = 2_000;
const CONCURRENCY: usize = 32;

fn spec(name: String, port: i64) -> ServiceSpec {
    ServiceSpec {
        name,
        ports: vec![PortSpec {
            published: port,
            ..PortSpec::default()
        }],
        ..ServiceSpec::default()
    }
}

async fn cluster(size: u64, dir: &std::path::Path) -> Vec<Arc<RegistryNode>> {
    let ca = ClusterCa::generate("bench").expect("CA");
    let mut nodes = Vec::new();
    for id in 1..=size {
        let credentials = ca
            .node_credentials(id, CertRole::Manager, "bench", Duration::from_secs(3600))
            .expect("credentials");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let node = RegistryNode::start(NodeOptions {
            id,
            raft_listener: listener,
            raft_addr: addr.clone(),
            data_file: dir.join(format!("bench-{size}-{id}.redb")),
            credentials,
            timing: Timing::default(),
        })
        .await
        .expect("start");
        nodes.push((Arc::new(node), addr));
    }
    nodes[0].0.bootstrap().await.expect("bootstrap");
    let started = Instant::now();
    while !nodes[0].0.is_leader() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (id, (_, addr)) in nodes.iter().enumerate().skip(1) {
        nodes[0]
            .0
            .add_member(id as u64 + 1, addr, true)
            .await
            .expect("add member");
    }
    nodes.into_iter().map(|(node, _)| node).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Alternates create and remove so the state stays small.
fn command(i: usize) -> Command {
    let name = format!("bench-{}", i / 2);
    if i % 2 == 0 {
        Command::CreateService {
            spec: spec(name, 1 + (i / 2 % 60_000) as i64),
            id: String::new(),
        }
    } else {
        Command::RemoveService { name }
    }
}

async fn measure(label: &str, leader: Arc<RegistryNode>) {
    let mut latencies = Vec::with_capacity(SEQUENTIAL_WRITES);
    for i in 0..SEQUENTIAL_WRITES {
        let started = Instant::now();
        let outcome = leader.propose(command(i)).await.expect("propose");
        assert!(!matches!(outcome, Outcome::Rejected { .. }), "{outcome:?}");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let leader = Arc::clone(&leader);
        tasks.push(tokio::spawn(async move {
            let mut i = SEQUENTIAL_WRITES + worker * 2 * (CONCURRENT_WRITES / CONCURRENCY);
            for _ in 0..CONCURRENT_WRITES / CONCURRENCY / 2 {
                leader.propose(command(i)).await.expect("propose");
                leader.propose(command(i + 1)).await.expect("propose");
                i += 2;
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let rate = CONCURRENT_WRITES as f64 / started.elapsed().as_secs_f64();
    println!(
        "| {label} | {:.2} | {:.2} | {:.0} |",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        rate
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        println!("| cluster | p50 commit ms (sequential) | p99 commit ms (sequential) | writes/s ({CONCURRENCY} concurrent clients) |");
        println!("|---|---|---|---|");
        let single = cluster(1, dir.path()).await;
        measure("1 node (baseline)", Arc::clone(&single[0])).await;
        let three = cluster(3, dir.path()).await;
        measure("3 nodes", Arc::clone(&three[0])).await;
    });
}
