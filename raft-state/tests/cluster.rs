//! A three-node registry on loopback: bootstrap, join, forwarded writes,
//! linearizable reads, a node of another CA refused, leader failover without
//! losing acknowledged writes, restart from disk, and catch-up by snapshot.

use std::time::{Duration, Instant};

use lb_config::{EndpointSpec, PortSpec, ServiceSpec};
use lbmesh_tls::{CertRole, ClusterCa};
use raft_state::network::Credentials;
use raft_state::registry::{NodeOptions, RegistryNode, Timing};
use raft_state::state::{Command, NodeId, Outcome};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(20);

/// The cluster CA of these tests, made once.
fn cluster_ca() -> &'static ClusterCa {
    static CA: std::sync::OnceLock<ClusterCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate("test").expect("a CA"))
}

/// Manager credentials of node `id` from `ca`.
fn credentials_from(ca: &ClusterCa, id: NodeId) -> Credentials {
    ca.node_credentials(id, CertRole::Manager, "test", Duration::from_secs(3600))
        .expect("credentials")
}

fn credentials(id: NodeId) -> Credentials {
    credentials_from(cluster_ca(), id)
}

fn spec(name: &str, port: i64) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        ports: vec![PortSpec {
            published: port,
            target: Some(80),
            protocol: None,
        }],
        endpoints: vec![EndpointSpec {
            address: "10.0.0.1".to_owned(),
            weight: None,
        }],
        ..ServiceSpec::default()
    }
}

struct Harness {
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Starts node `id` on 127.0.0.1 (reusing `port` when restarting).
    async fn start(
        &self,
        id: NodeId,
        port: u16,
        credentials: Credentials,
        timing: Timing,
    ) -> (RegistryNode, u16) {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind raft");
        let port = listener.local_addr().expect("addr").port();
        let node = RegistryNode::start(NodeOptions {
            id,
            raft_listener: listener,
            raft_addr: format!("127.0.0.1:{port}"),
            data_file: self.dir.path().join(format!("node-{id}.redb")),
            credentials,
            timing,
        })
        .await
        .expect("node starts");
        (node, port)
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < WAIT {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn created(outcome: Outcome) {
    assert!(matches!(outcome, Outcome::Service { .. }), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_forward_and_survive_the_leader() {
    let harness = Harness::new();
    let timing = Timing::default();
    let (n1, _p1) = harness.start(1, 0, credentials(1), timing.clone()).await;
    let (n2, p2) = harness.start(2, 0, credentials(2), timing.clone()).await;
    let (n3, p3) = harness.start(3, 0, credentials(3), timing.clone()).await;
    n1.bootstrap().await.expect("bootstrap");
    eventually("node 1 leads", || n1.is_leader()).await;
    n1.add_member(2, &format!("127.0.0.1:{p2}"), true)
        .await
        .expect("add 2");
    n1.add_member(3, &format!("127.0.0.1:{p3}"), true)
        .await
        .expect("add 3");
    let voters = n1
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    assert_eq!(voters, 3);

    // A write on a follower is forwarded to the leader and reaches everyone.
    created(
        n3.propose(Command::CreateService {
            spec: spec("web", 8080),
            id: String::new(),
        })
        .await
        .expect("propose"),
    );
    for node in [&n1, &n2, &n3] {
        eventually("web on every node", || {
            node.local().state.services.contains_key("web")
        })
        .await;
    }
    // A rejected command is answered, not applied.
    let duplicate = n2
        .propose(Command::CreateService {
            spec: spec("web", 8081),
            id: String::new(),
        })
        .await
        .expect("propose");
    assert!(
        matches!(duplicate, Outcome::Rejected { .. }),
        "{duplicate:?}"
    );
    // A linearizable read on a follower sees an acknowledged write at once.
    created(
        n1.propose(Command::CreateService {
            spec: spec("api", 9090),
            id: String::new(),
        })
        .await
        .expect("propose"),
    );
    let read = n2.linearizable().await.expect("linearizable read");
    assert!(read.state.services.contains_key("api"));

    // A node whose certificate comes from another CA never receives the log.
    let (intruder, p4) = harness
        .start(
            4,
            0,
            credentials_from(&ClusterCa::generate("test").expect("CA"), 4),
            timing.clone(),
        )
        .await;
    n1.add_learner_nonblocking(4, &format!("127.0.0.1:{p4}"))
        .await
        .expect("learner request");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        intruder.local().index,
        0,
        "a node of another CA got entries"
    );
    assert!(intruder.local().state.services.is_empty());
    intruder.shutdown().await;

    // Kill the leader; the others elect a new one that takes writes.
    n1.shutdown().await;
    let killed = Instant::now();
    let mut acknowledged = vec!["web".to_owned(), "api".to_owned()];
    let first_after = loop {
        let name = format!("after-{}", acknowledged.len());
        match n2
            .propose(Command::CreateService {
                spec: spec(&name, 10_000 + acknowledged.len() as i64),
                id: String::new(),
            })
            .await
        {
            Ok(Outcome::Service { .. }) => {
                acknowledged.push(name);
                break killed.elapsed();
            }
            Ok(other) => panic!("{other:?}"),
            Err(_) if killed.elapsed() < WAIT => continue,
            Err(error) => panic!("no new leader: {error}"),
        }
    };
    assert!(
        first_after < Duration::from_secs(5),
        "first write after the kill took {first_after:?}"
    );
    for i in 0..20 {
        let name = format!("burst-{i}");
        created(
            n3.propose(Command::CreateService {
                spec: spec(&name, 20_000 + i),
                id: String::new(),
            })
            .await
            .expect("propose"),
        );
        acknowledged.push(name);
    }
    let read = n3.linearizable().await.expect("read");
    for name in &acknowledged {
        assert!(read.state.services.contains_key(name), "{name} lost");
    }
    assert_eq!(
        read.state.services.len(),
        acknowledged.len(),
        "no service twice, none extra"
    );
    n2.shutdown().await;
    n3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_disk_and_snapshot_catch_up() {
    let harness = Harness::new();
    let timing = Timing {
        snapshot_every: 200,
        keep_after_snapshot: 10,
        ..Timing::default()
    };
    let (n1, p1) = harness.start(1, 0, credentials(1), timing.clone()).await;
    n1.bootstrap().await.expect("bootstrap");
    eventually("node 1 leads", || n1.is_leader()).await;
    for i in 0..1_100i64 {
        let name = format!("svc-{i}");
        let command = if i % 2 == 0 {
            Command::CreateService {
                spec: spec(&name, 1_000 + i),
                id: String::new(),
            }
        } else {
            Command::RemoveService {
                name: format!("svc-{}", i - 1),
            }
        };
        n1.propose(command).await.expect("propose");
    }
    eventually("a snapshot and a purged log", || {
        let m = n1.metrics();
        m.snapshot.is_some() && m.purged.is_some()
    })
    .await;

    // A node joining now cannot replay the purged log: it needs the snapshot.
    let (n2, p2) = harness.start(2, 0, credentials(2), timing.clone()).await;
    n1.add_member(2, &format!("127.0.0.1:{p2}"), false)
        .await
        .expect("add learner");
    let expected = n1.local();
    eventually("node 2 caught up", || n2.local().index >= expected.index).await;
    assert_eq!(n2.local().state, expected.state);
    assert!(n2.metrics().snapshot.is_some(), "caught up by snapshot");

    // Both stop; both restart from their files and serve the same state.
    n1.shutdown().await;
    n2.shutdown().await;
    let (n1, _) = harness.start(1, p1, credentials(1), timing.clone()).await;
    let (n2, _) = harness.start(2, p2, credentials(2), timing.clone()).await;
    eventually("node 1 leads again", || n1.is_leader()).await;
    assert_eq!(n1.local().state, expected.state);
    created(
        n1.propose(Command::CreateService {
            spec: spec("after-restart", 5),
            id: String::new(),
        })
        .await
        .expect("propose"),
    );
    eventually("node 2 follows after restart", || {
        n2.local().state.services.contains_key("after-restart")
    })
    .await;
    n1.shutdown().await;
    n2.shutdown().await;
}

/// The state is persisted only by snapshots: a node restarted before its
/// first one comes back at the state it had, applied again from its log
/// before it serves (not once it leads again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_before_any_snapshot_applies_the_log_again() {
    let harness = Harness::new();
    let (n1, p1) = harness.start(1, 0, credentials(1), Timing::default()).await;
    n1.bootstrap().await.expect("bootstrap");
    eventually("node 1 leads", || n1.is_leader()).await;
    for i in 0..20i64 {
        created(
            n1.propose(Command::CreateService {
                spec: spec(&format!("svc-{i}"), 2_000 + i),
                id: String::new(),
            })
            .await
            .expect("propose"),
        );
    }
    let expected = n1.local();
    assert!(n1.metrics().snapshot.is_none(), "no snapshot yet");
    n1.shutdown().await;
    let (n1, _) = harness
        .start(1, p1, credentials(1), Timing::default())
        .await;
    let restarted = n1.local();
    assert_eq!(restarted.index, expected.index);
    assert_eq!(restarted.state, expected.state);
    assert_eq!(restarted.state.services.len(), 20);
    n1.shutdown().await;
}

/// A follower that lost the answer to a forwarded create (the leader died
/// after committing it) sends it again with the same request id: the
/// resend, through another follower and after the leader is gone, gets the
/// first answer, and the service is created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_write_gets_its_first_answer_across_a_leader_change() {
    let harness = Harness::new();
    let timing = Timing::default();
    let (n1, _p1) = harness.start(1, 0, credentials(1), timing.clone()).await;
    let (n2, p2) = harness.start(2, 0, credentials(2), timing.clone()).await;
    let (n3, p3) = harness.start(3, 0, credentials(3), timing.clone()).await;
    n1.bootstrap().await.expect("bootstrap");
    eventually("node 1 leads", || n1.is_leader()).await;
    for (id, port) in [(2, p2), (3, p3)] {
        n1.add_member(id, &format!("127.0.0.1:{port}"), true)
            .await
            .expect("add member");
    }
    let request = n3.request_id();
    let create = || Command::CreateService {
        spec: spec("web", 8080),
        id: String::new(),
    };
    // Forwarded by follower 3 to the leader; its answer is "lost".
    let first = n3
        .propose_request(request.clone(), create())
        .await
        .expect("propose");
    created(first.clone());
    // The resend, forwarded again.
    let resent = n3
        .propose_request(request.clone(), create())
        .await
        .expect("resend");
    assert_eq!(resent, first, "a resend gets the first answer, not a 409");

    // The leader dies; the resend reaches the new leader through node 2.
    for node in [&n2, &n3] {
        eventually("web applied", || {
            node.local().state.remembered(&request).is_some()
        })
        .await;
    }
    n1.shutdown().await;
    let killed = Instant::now();
    let after = loop {
        match n2.propose_request(request.clone(), create()).await {
            Ok(outcome) => break outcome,
            Err(_) if killed.elapsed() < WAIT => continue,
            Err(error) => panic!("no new leader: {error}"),
        }
    };
    assert_eq!(after, first, "the new leader answers the first answer too");
    // A new request for the same service is a new write, refused as before.
    let other = n2.propose(create()).await.expect("propose");
    assert!(matches!(other, Outcome::Rejected { .. }), "{other:?}");
    let read = n3.linearizable().await.expect("read");
    assert_eq!(read.state.services.len(), 1);
    assert_eq!(read.state.services["web"].version, 1, "created once");
    n2.shutdown().await;
    n3.shutdown().await;
}
