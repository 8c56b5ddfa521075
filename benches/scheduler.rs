//! Cost of one scheduler round with many services: a full round (every
//! service planned, what the scheduler did every 500 ms before) against an
//! incremental one (the change comparison and the one service that
//! changed), on the same simulated state in the same run: 3 ready nodes
//! and 10,000 replicated services of 3 running tasks each (process tasks,
//! so no engine; the agents' reports are applied to the state directly).
//!
//! Run: `cargo bench --bench scheduler` (`LBMESH_BENCH_SUMMARY_ONLY=1`
//! skips criterion's report). The summary prints the median of each and
//! their ratio.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::Criterion;
use lb_config::{PortSpec, ServiceSpec};
use lbmesh::scheduler::{changed, plan, plan_scope, Changed, Scope};
use raft_state::state::{
    Availability, ClusterInfo, Command, NodeRecord, NodeStatus, RegistryState, Role,
    DEFAULT_VIP_RANGE,
};
use raft_state::task::{DesiredState, TaskHealth, TaskOp, TaskReport, TaskState};

const SERVICES: usize = 10_000;
const REPLICAS: i64 = 3;
const NODES: u64 = 3;
/// Registry time of the simulated rounds.
const NOW: u64 = 1_000_000;

fn spec(i: usize) -> ServiceSpec {
    ServiceSpec {
        name: format!("svc{i}"),
        ports: vec![PortSpec {
            published: 10_000 + i as i64,
            target: Some(80),
            protocol: None,
        }],
        command: Some("true".to_owned()),
        replicas: Some(REPLICAS),
        ..ServiceSpec::default()
    }
}

/// The registry with every service's tasks placed and running.
fn settled() -> RegistryState {
    let mut state = RegistryState::default();
    state.apply(&Command::InitCluster {
        cluster: ClusterInfo {
            id: "bench".into(),
            ..ClusterInfo::default()
        },
        vip_range: DEFAULT_VIP_RANGE,
        vip_range_v6: None,
        dns_domain: None,
    });
    for id in 1..=NODES {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, id as u8));
        state.apply(&Command::RegisterNode {
            node: NodeRecord {
                id,
                name: format!("n{id}"),
                raft_addr: SocketAddr::new(ip, 1),
                api_addr: SocketAddr::new(ip, 2),
                ingress_addr: ip,
                role: Role::Manager,
                availability: Availability::Active,
                status: NodeStatus::Ready,
                labels: Default::default(),
            },
        });
    }
    for i in 0..SERVICES {
        state.apply(&Command::CreateService {
            spec: spec(i),
            id: String::new(),
        });
    }
    let mut next = 0u64;
    let first = plan(&state, NOW, &mut HashMap::new(), &mut || {
        next += 1;
        format!("{next:012x}")
    });
    state.apply(&Command::Schedule {
        ops: first.ops,
        at: NOW,
    });
    let placed: Vec<(String, u64)> = state
        .tasks()
        .values()
        .filter(|t| t.desired == DesiredState::Running)
        .filter_map(|t| Some((t.id.clone(), t.node?)))
        .collect();
    for (port, (id, node)) in placed.into_iter().enumerate() {
        state.apply(&Command::ReportTask {
            report: Box::new(TaskReport {
                id,
                node,
                state: TaskState::Running,
                health: TaskHealth::None,
                endpoint: Some(raft_state::task::TaskEndpoint {
                    ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    ports: vec![(80, 20_000 + (port % 40_000) as u16)],
                }),
                runtime_id: Some(format!("pid:{port}")),
                message: String::new(),
                at: NOW,
            }),
        });
    }
    state
}

/// A full round over `state`: every service planned.
fn full_round(state: &RegistryState) -> usize {
    let plan = plan(state, NOW, &mut HashMap::new(), &mut String::new);
    plan.planned
}

/// An incremental round: the comparison with the state last planned, then
/// the services it names.
fn incremental_round(last: &RegistryState, now: &RegistryState) -> usize {
    let Changed::Services(names) = changed(last, now) else {
        panic!("no node changed");
    };
    let mut ids = 0u64;
    let plan = plan_scope(
        now,
        NOW,
        Scope::Only(&names),
        &mut HashMap::new(),
        &mut || {
            ids += 1;
            format!("new{ids}")
        },
    );
    plan.planned
}

/// `state` with one service scaled from 3 to 4 replicas.
fn one_change(state: &RegistryState) -> RegistryState {
    let mut changed = state.clone();
    let mut scaled = spec(SERVICES / 2);
    scaled.replicas = Some(REPLICAS + 1);
    changed.apply(&Command::UpdateService { spec: scaled });
    changed
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn summary(last: &RegistryState, now: &RegistryState) {
    let (mut full, mut incremental) = (Vec::new(), Vec::new());
    // Alternate so both see the same machine load.
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..15 {
        let started = Instant::now();
        black_box(full_round(now));
        full.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        black_box(incremental_round(last, now));
        incremental.push(started.elapsed().as_secs_f64() * 1e3);
        if Instant::now() > deadline {
            break;
        }
    }
    let (full, incremental) = (median(full), median(incremental));
    println!(
        "\nscheduler round, {SERVICES} services × {REPLICAS} tasks on {NODES} nodes (median ms, same run):"
    );
    println!("  full round (every service):        {full:>9.2}");
    println!("  incremental (compare + 1 service): {incremental:>9.2}");
    println!(
        "  full / incremental:                {:>9.1}",
        full / incremental
    );
}

fn main() {
    let last = settled();
    let live = last.tasks().values().filter(|t| t.is_live()).count();
    assert_eq!(live, SERVICES * REPLICAS as usize, "every task placed");
    let ops = plan(&last, NOW, &mut HashMap::new(), &mut String::new).ops;
    assert!(
        ops.is_empty(),
        "the bench state is settled: {:?}",
        &ops[..ops.len().min(3)]
    );
    let now = one_change(&last);
    assert_eq!(incremental_round(&last, &now), 1);
    let creates = plan(&now, NOW, &mut HashMap::new(), &mut String::new)
        .ops
        .iter()
        .filter(|op| matches!(op, TaskOp::Create { .. }))
        .count();
    assert_eq!(creates, 1, "the change asks for one task");
    if std::env::var_os("LBMESH_BENCH_SUMMARY_ONLY").is_none() {
        let mut c = Criterion::default()
            .configure_from_args()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(5));
        let mut group = c.benchmark_group(format!("scheduler-round/{SERVICES}-services"));
        group.bench_function("full", |b| b.iter(|| black_box(full_round(&now))));
        group.bench_function("incremental", |b| {
            b.iter(|| black_box(incremental_round(&last, &now)))
        });
        group.finish();
        c.final_summary();
    }
    summary(&last, &now);
}
