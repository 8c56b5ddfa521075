//! The plan, tested without a cluster.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use lb_config::{FailureAction, PortSpec, ServiceMode, ServiceSpec};
use raft_state::state::{
    Availability, ClusterInfo, NodeId, NodeRecord, NodeStatus, RegistryState, Role,
};
use raft_state::task::{DesiredState, TaskHealth, TaskRecord, TaskReport, TaskState, UpdateState};

use super::liveness::{judge, Hold, Judgement, Observation};
use super::*;

fn node(id: NodeId, labels: &[(&str, &str)]) -> NodeRecord {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, id as u8));
    NodeRecord {
        id,
        name: format!("n{id}"),
        raft_addr: SocketAddr::new(ip, 1),
        api_addr: SocketAddr::new(ip, 2),
        ingress_addr: ip,
        role: Role::Manager,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn web(replicas: i64) -> ServiceSpec {
    ServiceSpec {
        name: "web".to_owned(),
        ports: vec![PortSpec {
            published: 8080,
            target: Some(80),
            protocol: None,
        }],
        image: Some("img:v1".to_owned()),
        replicas: Some(replicas),
        ..ServiceSpec::default()
    }
}

/// A registry with three ready nodes and `spec`, driven by `plan` the
/// way the leader drives it.
struct Sim {
    state: RegistryState,
    now: Millis,
    batches: HashMap<String, Millis>,
    next_id: u32,
}

impl Sim {
    fn new(spec: ServiceSpec) -> Self {
        let mut state = RegistryState::default();
        state.apply(&Command::InitCluster {
            cluster: ClusterInfo {
                id: "c".into(),
                ..ClusterInfo::default()
            },
            vip_range: raft_state::state::DEFAULT_VIP_RANGE,
            vip_range_v6: None,
            dns_domain: None,
        });
        for id in 1..=3 {
            state.apply(&Command::RegisterNode {
                node: node(id, &[]),
            });
        }
        let outcome = state.apply(&Command::CreateService {
            spec,
            id: String::new(),
        });
        assert!(
            matches!(outcome, raft_state::state::Outcome::Service { .. }),
            "{outcome:?}"
        );
        Self {
            state,
            now: 1_000_000,
            batches: HashMap::new(),
            next_id: 0,
        }
    }

    fn round(&mut self) -> Plan {
        let mut next = self.next_id;
        let plan = plan(&self.state, self.now, &mut self.batches, &mut || {
            next += 1;
            format!("t{next}")
        });
        self.next_id = next;
        let ops = plan.ops.clone();
        let outcome = self.state.apply(&Command::Schedule { ops, at: self.now });
        assert!(
            !matches!(outcome, raft_state::state::Outcome::Rejected { .. }),
            "{outcome:?}"
        );
        for name in &plan.rollbacks {
            self.state
                .apply(&Command::RollbackService { name: name.clone() });
        }
        plan
    }

    /// Every agent does what it is told at once: assigned tasks run
    /// healthy, shut-down tasks stop.
    fn agents(&mut self) {
        let tasks: Vec<TaskRecord> = self.state.tasks().values().cloned().collect();
        for task in tasks {
            let Some(node) = task.node else { continue };
            let state = match (task.desired, task.state) {
                (DesiredState::Running, TaskState::Assigned) => TaskState::Running,
                (DesiredState::Shutdown, s) if !s.is_terminal() => TaskState::Shutdown,
                _ => continue,
            };
            self.report(&task.id, node, state, &task.message);
        }
    }

    fn report(&mut self, id: &str, node: NodeId, state: TaskState, message: &str) {
        let outcome = self.state.apply(&Command::ReportTask {
            report: Box::new(TaskReport {
                id: id.to_owned(),
                node,
                state,
                health: TaskHealth::Healthy,
                endpoint: Some(raft_state::task::TaskEndpoint {
                    ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    ports: vec![(80, 30000)],
                }),
                runtime_id: Some(format!("c-{id}")),
                message: message.to_owned(),
                at: self.now,
            }),
        });
        assert!(
            !matches!(outcome, raft_state::state::Outcome::Rejected { .. }),
            "{outcome:?}"
        );
    }

    /// Rounds and agents until nothing changes (bounded).
    fn settle(&mut self) {
        for _ in 0..50 {
            self.now += 1_000;
            let plan = self.round();
            self.agents();
            if plan.ops.is_empty() && plan.rollbacks.is_empty() {
                return;
            }
        }
        panic!("the plan never settled: {:#?}", self.state.tasks());
    }

    fn live(&self) -> Vec<&TaskRecord> {
        self.state
            .tasks()
            .values()
            .filter(|t| t.is_live())
            .collect()
    }

    fn per_node(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for task in self.live() {
            *counts.entry(task.node.unwrap_or(0)).or_default() += 1;
        }
        counts
    }

    fn update(&mut self, change: impl FnOnce(&mut ServiceSpec)) {
        let mut spec = self.state.services["web"].spec.clone();
        change(&mut spec);
        let outcome = self.state.apply(&Command::UpdateService { spec });
        assert!(
            !matches!(outcome, raft_state::state::Outcome::Rejected { .. }),
            "{outcome:?}"
        );
    }
}

#[test]
fn replicas_spread_and_scale_down_takes_from_the_most_crowded() {
    let mut sim = Sim::new(web(3));
    sim.settle();
    assert_eq!(sim.per_node(), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
    sim.update(|s| s.replicas = Some(6));
    sim.settle();
    assert_eq!(sim.per_node(), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    sim.update(|s| s.replicas = Some(2));
    sim.settle();
    let counts = sim.per_node();
    assert_eq!(counts.values().sum::<usize>(), 2);
    assert!(counts.values().all(|c| *c == 1), "{counts:?}");
    // The removed tasks were shut down, not forgotten mid-flight.
    assert!(sim
        .state
        .tasks()
        .values()
        .any(|t| t.desired == DesiredState::Shutdown && t.message == "scaled down"));
}

#[test]
fn a_down_node_loses_its_tasks_to_the_others() {
    let mut sim = Sim::new(web(3));
    sim.settle();
    sim.state.apply(&Command::SetNodeStatus {
        id: 2,
        status: NodeStatus::Down,
    });
    sim.settle();
    assert_eq!(sim.live().len(), 3);
    assert_eq!(sim.per_node().get(&2), None);
    assert!(sim
        .state
        .tasks()
        .values()
        .any(|t| t.node == Some(2) && t.state == TaskState::Orphaned));
}

#[test]
fn drain_moves_tasks_and_pause_keeps_them() {
    let mut sim = Sim::new(web(3));
    sim.settle();
    let availability = |sim: &mut Sim, a| {
        sim.state.apply(&Command::UpdateNode {
            id: 2,
            availability: Some(a),
            role: None,
            labels_add: BTreeMap::new(),
            labels_remove: Vec::new(),
        });
    };
    availability(&mut sim, Availability::Pause);
    sim.settle();
    assert_eq!(sim.per_node().get(&2), Some(&1), "pause keeps tasks");
    availability(&mut sim, Availability::Drain);
    sim.settle();
    assert_eq!(sim.per_node().get(&2), None);
    assert_eq!(sim.live().len(), 3);
    availability(&mut sim, Availability::Active);
    sim.update(|s| s.replicas = Some(6));
    sim.settle();
    assert_eq!(
        sim.per_node().get(&2),
        Some(&2),
        "active allows placement again"
    );
}

#[test]
fn constraints_and_max_per_node() {
    let mut spec = web(2);
    spec.constraints = vec!["node.labels.zone==blue".to_owned()];
    let mut sim = Sim::new(spec);
    sim.settle();
    let pending: Vec<&TaskRecord> = sim
        .live()
        .into_iter()
        .filter(|t| t.state == TaskState::Pending)
        .collect();
    assert_eq!(pending.len(), 2);
    assert!(
        pending[0].message.contains("node.labels.zone==blue"),
        "{}",
        pending[0].message
    );
    sim.state.apply(&Command::UpdateNode {
        id: 3,
        availability: None,
        role: None,
        labels_add: BTreeMap::from([("zone".to_owned(), "blue".to_owned())]),
        labels_remove: Vec::new(),
    });
    sim.settle();
    assert_eq!(sim.per_node(), BTreeMap::from([(3, 2)]));
    sim.update(|s| s.max_replicas_per_node = Some(1));
    sim.settle();
    // Existing tasks stay; a new one would not fit.
    sim.update(|s| s.replicas = Some(3));
    sim.settle();
    let waiting = sim.live().into_iter().filter(|t| t.node.is_none()).count();
    assert_eq!(waiting, 1);
}

#[test]
fn global_mode_follows_the_nodes() {
    let mut spec = web(1);
    spec.replicas = None;
    spec.mode = ServiceMode::Global;
    let mut sim = Sim::new(spec);
    sim.settle();
    assert_eq!(sim.per_node(), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
    sim.state
        .apply(&Command::RegisterNode { node: node(4, &[]) });
    sim.settle();
    assert_eq!(sim.per_node().get(&4), Some(&1));
}

#[test]
fn failed_tasks_restart_after_the_delay_and_give_up_after_max_attempts() {
    let mut spec = web(1);
    spec.restart.delay = Some(Duration::from_secs(5));
    spec.restart.max_attempts = Some(2);
    let mut sim = Sim::new(spec);
    sim.settle();
    for attempt in 1..=3u32 {
        let task = sim.live()[0].clone();
        sim.report(
            &task.id,
            task.node.unwrap(),
            TaskState::Failed,
            "exited with code 1",
        );
        sim.now += 1_000;
        sim.round();
        if attempt <= 2 {
            assert!(sim.live().is_empty(), "replaced before the delay");
            sim.now += 5_000;
            sim.round();
            sim.agents();
            assert_eq!(sim.live().len(), 1, "attempt {attempt}");
            assert_eq!(sim.live()[0].attempt, attempt);
        }
    }
    sim.now += 60_000;
    sim.round();
    assert!(sim.live().is_empty(), "gave up after two restarts");
}

#[test]
fn start_first_update_keeps_every_slot_serving() {
    let mut spec = web(3);
    spec.update.order = Some(lb_config::UpdateOrder::StartFirst);
    let mut sim = Sim::new(spec);
    sim.settle();
    sim.update(|s| s.image = Some("img:v2".to_owned()));
    let new_version = sim.state.services["web"].task_version;
    for _ in 0..50 {
        sim.now += 1_000;
        sim.round();
        let serving = sim.state.tasks().values().filter(|t| t.serves()).count();
        assert!(serving >= 3, "only {serving} serving during the update");
        sim.agents();
        if sim.live().iter().all(|t| t.spec_version == new_version) {
            break;
        }
    }
    sim.settle();
    assert!(sim.live().iter().all(|t| t.spec_version == new_version));
    assert_eq!(sim.live().len(), 3);
    let status = sim.state.services["web"].update.clone().unwrap();
    assert_eq!(status.state, UpdateState::Completed);
}

#[test]
fn a_failing_update_rolls_back_by_itself() {
    let mut spec = web(2);
    spec.update.order = Some(lb_config::UpdateOrder::StartFirst);
    spec.update.failure_action = Some(FailureAction::Rollback);
    let mut sim = Sim::new(spec);
    sim.settle();
    let old_version = sim.state.services["web"].task_version;
    sim.update(|s| s.image = Some("img:crash".to_owned()));
    sim.now += 1_000;
    sim.round();
    let new_task = sim
        .live()
        .into_iter()
        .find(|t| t.spec_version != old_version)
        .cloned()
        .expect("a new task");
    sim.report(
        &new_task.id,
        new_task.node.unwrap(),
        TaskState::Starting,
        "",
    );
    sim.report(
        &new_task.id,
        new_task.node.unwrap(),
        TaskState::Failed,
        "exited with code 1",
    );
    sim.settle();
    let record = &sim.state.services["web"];
    assert_eq!(record.spec.image.as_deref(), Some("img:v1"));
    assert_eq!(record.task_version, old_version);
    assert_eq!(
        record.update.as_ref().unwrap().state,
        UpdateState::RollbackCompleted
    );
    assert!(sim.live().iter().all(|t| t.spec_version == old_version));
    assert_eq!(sim.live().len(), 2);
}

/// Tasks created by the last round and not yet started by an agent.
fn assigned(sim: &Sim) -> usize {
    sim.live()
        .iter()
        .filter(|t| t.state == TaskState::Assigned)
        .count()
}

#[test]
fn a_rollback_rolls_per_its_own_policy() {
    let mut spec = web(4);
    spec.update.parallelism = Some(1);
    spec.update.order = Some(lb_config::UpdateOrder::StartFirst);
    spec.rollback = Some(lb_config::UpdateSpec {
        parallelism: Some(0),
        order: Some(lb_config::UpdateOrder::StartFirst),
        ..lb_config::UpdateSpec::default()
    });
    let mut sim = Sim::new(spec);
    sim.settle();
    let old_version = sim.state.services["web"].task_version;
    sim.update(|s| s.image = Some("img:v2".to_owned()));
    sim.now += 1_000;
    sim.round();
    assert_eq!(assigned(&sim), 1, "the update replaces one task at a time");
    sim.agents();
    sim.settle();
    assert_eq!(
        sim.state.services["web"].update.as_ref().map(|u| u.state),
        Some(UpdateState::Completed)
    );

    sim.state.apply(&Command::RollbackService {
        name: "web".to_owned(),
    });
    sim.now += 1_000;
    sim.round();
    assert_eq!(
        assigned(&sim),
        4,
        "the rollback replaces every task at once"
    );
    sim.agents();
    sim.settle();
    let record = &sim.state.services["web"];
    assert_eq!(record.spec.image.as_deref(), Some("img:v1"));
    assert_eq!(
        record.update.as_ref().map(|u| u.state),
        Some(UpdateState::RollbackCompleted)
    );
    assert!(sim.live().iter().all(|t| t.spec_version == old_version));
    assert_eq!(sim.live().len(), 4);
}

/// Node 1 leads; `heard` holds what it heard from the others.
fn judge_at(
    sim: &Sim,
    heard: &HashMap<NodeId, Instant>,
    start: Instant,
    after: Duration,
    quorum_heard: bool,
) -> Judgement {
    judge(
        &sim.state,
        &Observation {
            leader: 1,
            last_heard: heard,
            leader_since: start,
            now: start + after,
            grace: Duration::from_secs(5),
            quorum_heard,
        },
    )
}

#[test]
fn a_silent_node_goes_down_and_a_fresh_leader_gives_a_full_grace() {
    let sim = Sim::new(web(1));
    let start = Instant::now();
    let heard = HashMap::from([(2, start + Duration::from_secs(9))]);
    let judgement = judge_at(&sim, &heard, start, Duration::from_secs(10), true);
    assert_eq!(judgement.changes, vec![(3, NodeStatus::Down)]);
    assert_eq!(judgement.held, None);
    // A fresh leader gives every node it never heard a full grace period.
    let judgement = judge_at(&sim, &HashMap::new(), start, Duration::from_secs(4), true);
    assert_eq!(judgement, Judgement::default());
}

/// A voter elected leader counts a node's silence from the last heartbeat
/// it heard while it followed, not from its election: node 3 (the killed
/// old leader) went silent 4 s before this election and is down 1 s after
/// it with a 5 s grace, while node 2, heard just before the election, stays
/// ready. Before heartbeats reached every voter the new leader counted from
/// its election and marked node 3 down only 5 s after it.
#[test]
fn a_new_leader_counts_silence_from_the_last_heartbeat_it_heard() {
    let sim = Sim::new(web(1));
    let elected = Instant::now() + Duration::from_secs(60);
    let heard = HashMap::from([
        (2, elected - Duration::from_millis(200)),
        (3, elected - Duration::from_secs(4)),
    ]);
    let judgement = judge_at(&sim, &heard, elected, Duration::from_millis(1_100), true);
    assert_eq!(judgement.changes, vec![(3, NodeStatus::Down)]);
    assert_eq!(judgement.held, None);
}

#[test]
fn the_leader_never_marks_itself_down() {
    let sim = Sim::new(web(1));
    let start = Instant::now();
    // The leader's own heartbeats were stuck on the old leader: nothing of
    // node 1 was heard, but it is the one judging.
    let heard = HashMap::from([
        (2, start + Duration::from_secs(9)),
        (3, start + Duration::from_secs(9)),
    ]);
    let judgement = judge_at(&sim, &heard, start, Duration::from_secs(10), true);
    assert_eq!(judgement, Judgement::default());
}

#[test]
fn a_leader_without_a_recent_quorum_marks_no_one_down() {
    let sim = Sim::new(web(1));
    let start = Instant::now();
    let heard = HashMap::from([(2, start + Duration::from_secs(9))]);
    let judgement = judge_at(&sim, &heard, start, Duration::from_secs(10), false);
    assert_eq!(judgement.changes, vec![]);
    assert_eq!(judgement.held, Some(Hold::NoQuorum));
    assert_eq!(judgement.silent, 1);
}

#[test]
fn more_than_half_of_the_ready_nodes_silent_at_once_marks_none_down() {
    let sim = Sim::new(web(1));
    let start = Instant::now();
    let judgement = judge_at(&sim, &HashMap::new(), start, Duration::from_secs(10), true);
    assert_eq!(judgement.changes, vec![]);
    assert_eq!(
        judgement.held,
        Some(Hold::MassSilence {
            silent: 2,
            ready: 3
        })
    );
}

#[test]
fn a_down_node_heard_again_comes_back_even_while_others_are_held() {
    let mut sim = Sim::new(web(1));
    sim.state.apply(&Command::SetNodeStatus {
        id: 2,
        status: NodeStatus::Down,
    });
    let start = Instant::now();
    let heard = HashMap::from([(2, start + Duration::from_secs(9))]);
    let judgement = judge_at(&sim, &heard, start, Duration::from_secs(10), false);
    assert_eq!(judgement.changes, vec![(2, NodeStatus::Ready)]);
    assert_eq!(judgement.held, Some(Hold::NoQuorum));
}

#[test]
fn a_new_term_restarts_the_grace_even_when_no_round_saw_this_node_follow() {
    let start = Instant::now();
    let first = Leadership::observe(None, 4, start);
    let later = start + Duration::from_secs(7);
    assert_eq!(
        Leadership::observe(Some(first), 4, later),
        first,
        "same term"
    );
    let regained = Leadership::observe(Some(first), 6, later);
    assert_eq!(regained.since, later, "lost and regained within one round");
    assert_eq!(regained.term, 6);
}

/// A round takes each service's checked form from the registry, made once
/// when the spec was stored, and never validates the stored spec again:
/// with the stored spec corrupted behind the state machine's back (port 70000,
/// which validation refuses) the round still places every replica.
#[test]
fn a_round_reuses_the_checked_form_instead_of_validating_again() {
    let mut sim = Sim::new(web(3));
    let record = sim.state.services.get_mut("web").expect("stored");
    record.spec.ports[0].published = 70_000;
    assert!(
        record.spec.validate().is_err(),
        "the corrupt spec would fail"
    );
    sim.now += 1_000;
    let mut next = 0;
    let plan = plan(&sim.state, sim.now, &mut sim.batches, &mut || {
        next += 1;
        format!("t{next}")
    });
    let created = plan
        .ops
        .iter()
        .filter(|op| matches!(op, raft_state::task::TaskOp::Create { .. }))
        .count();
    assert_eq!(created, 3, "{:?}", plan.ops);
}

/// `count` services of `replicas` tasks each besides web, settled.
fn sim_with_services(count: usize, replicas: i64) -> Sim {
    let mut sim = Sim::new(web(replicas));
    for i in 0..count {
        let mut spec = web(replicas);
        spec.name = format!("svc{i}");
        spec.ports[0].published = 9000 + i as i64;
        let outcome = sim.state.apply(&Command::CreateService {
            spec,
            id: String::new(),
        });
        assert!(
            matches!(outcome, raft_state::state::Outcome::Service { .. }),
            "{outcome:?}"
        );
    }
    sim.settle();
    sim
}

impl Sim {
    /// One round as the leader runs it, with `memory` across rounds, at
    /// `at`; the agents then act. `None` when nothing needed planning.
    fn leader_round(&mut self, memory: &mut Memory, at: Instant) -> Option<Plan> {
        self.now += 1_000;
        let mut next = self.next_id;
        let state = Arc::new(self.state.clone());
        let (plan, mark) = memory.next_round(&state, self.now, at, &mut || {
            next += 1;
            format!("t{next}")
        })?;
        self.next_id = next;
        let outcome = self.state.apply(&Command::Schedule {
            ops: plan.ops.clone(),
            at: self.now,
        });
        assert!(
            !matches!(outcome, raft_state::state::Outcome::Rejected { .. }),
            "{outcome:?}"
        );
        memory.applied(mark);
        self.agents();
        Some(plan)
    }
}

/// After the first (full) round, a change to one service plans that
/// service alone, and a round with no change plans nothing.
#[test]
fn a_change_to_one_service_plans_that_service_only() {
    let mut sim = sim_with_services(20, 2);
    let mut memory = Memory::default();
    let start = Instant::now();
    let first = sim.leader_round(&mut memory, start).expect("a first round");
    assert_eq!(first.planned, 21, "the first round plans every service");
    assert!(first.ops.is_empty(), "settled: {:?}", first.ops);
    assert!(
        sim.leader_round(&mut memory, start).is_none(),
        "nothing changed: nothing planned"
    );

    let mut spec = sim.state.services["svc7"].spec.clone();
    spec.replicas = Some(3);
    sim.state.apply(&Command::UpdateService { spec });
    let scaled = sim.leader_round(&mut memory, start).expect("a change");
    assert_eq!(scaled.planned, 1, "only svc7 is planned");
    let created: Vec<&str> = scaled
        .ops
        .iter()
        .filter_map(|op| match op {
            raft_state::task::TaskOp::Create { task } => Some(task.service.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(created, ["svc7"]);
    // The new task's report (its agent ran it) touches svc7 again.
    let reported = sim.leader_round(&mut memory, start).expect("the report");
    assert_eq!((reported.planned, reported.ops.len()), (1, 0));
    assert!(sim.leader_round(&mut memory, start).is_none());
    assert_eq!(
        sim.state.tasks_of("svc7").filter(|t| t.is_live()).count(),
        3
    );

    // A node change can move any service's tasks: every one is planned.
    sim.state.apply(&Command::SetNodeStatus {
        id: 2,
        status: NodeStatus::Down,
    });
    let moved = sim.leader_round(&mut memory, start).expect("a node change");
    assert_eq!(moved.planned, 21);
}

/// A change the comparison misses (here: the planned mark already holds
/// it, as if a round had seen a state it did not plan) is repaired by the
/// periodic full round, and not before it is due.
#[test]
fn the_periodic_full_round_repairs_a_missed_change() {
    let mut sim = sim_with_services(5, 2);
    let mut memory = Memory::default();
    let start = Instant::now();
    sim.leader_round(&mut memory, start).expect("a first round");
    // A task of svc3 vanishes without any round noticing it.
    let lost = sim
        .state
        .tasks_of("svc3")
        .find(|t| t.is_live())
        .map(|t| t.id.clone())
        .expect("a live task of svc3");
    sim.state.remove_task(&lost);
    memory.planned = Some(Arc::new(sim.state.clone()));
    let soon = start + FULL_ROUND_INTERVAL / 2;
    assert!(
        sim.leader_round(&mut memory, soon).is_none(),
        "the missed change is invisible to the comparison"
    );
    let due = start + FULL_ROUND_INTERVAL;
    let repair = sim.leader_round(&mut memory, due).expect("the full round");
    assert_eq!(repair.planned, 6);
    assert!(
        repair.ops.iter().any(|op| matches!(
            op,
            raft_state::task::TaskOp::Create { task } if task.service == "svc3"
        )),
        "{:?}",
        repair.ops
    );
    assert_eq!(
        sim.state.tasks_of("svc3").filter(|t| t.is_live()).count(),
        2
    );
}

/// A rolling update waits on time (its delay) as well as on changes: the
/// service stays planned every round until the update completes.
#[test]
fn an_update_in_progress_is_planned_every_round_until_it_completes() {
    let mut sim = sim_with_services(3, 2);
    let mut memory = Memory::default();
    let start = Instant::now();
    sim.leader_round(&mut memory, start).expect("a first round");
    sim.update(|s| {
        s.image = Some("img:v2".to_owned());
        s.update.delay = Some(Duration::from_secs(5));
        s.update.parallelism = Some(1);
    });
    let mut rounds = 0;
    while rounds < 50 {
        rounds += 1;
        match sim.leader_round(&mut memory, start) {
            Some(plan) => assert!(plan.planned <= 1, "only web: {plan:?}"),
            None => break,
        }
    }
    let status = sim.state.services["web"].update.clone().expect("an update");
    assert_eq!(
        status.state,
        UpdateState::Completed,
        "after {rounds} rounds"
    );
    assert!(sim
        .state
        .tasks_of("web")
        .filter(|t| t.is_live())
        .all(|t| t.spec_version == sim.state.services["web"].task_version));
}
