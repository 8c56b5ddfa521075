//! The node's DNS responder, as resolvers see it.
//!
//! Without Docker, on a one-node cluster whose VIP range is on loopback
//! (its responder on 127.A.250.0:53), with a fake upstream resolver on
//! 127.0.0.1: a service's name and `NAME.lbmesh.internal` give its VIP
//! (UDP and TCP), a stack's service answers its short name under the
//! stack's search domain, other names are forwarded to the upstream,
//! garbage gets FORMERR (and a burst of random packets leaves it
//! answering), and a removed service is NXDOMAIN. A three-node cluster
//! answers under the domain it was bootstrapped with on every node, the
//! joiners' too, whatever their own `--dns-domain`.
//!
//! With a Docker engine, a three-node cluster whose VIP range is outside
//! loopback (198.18.A.0/24, made local on the machine by lbd's route): a
//! stack of `web` (global: a container on every node, each given the
//! cluster's resolver, the joiners' too) and `redis` (busybox httpd,
//! `redis` with no published port) where `web`'s container reaches
//! `redis` by its short name and by its VIP, and gets NXDOMAIN once
//! `redis` is removed.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use test_support::cluster::*;
use test_support::images::{ensure_test_images, require_docker};
use test_support::mesh::{serving, tasks, wait_serving};
use test_support::wait::wait_for;

const WAIT: Duration = Duration::from_secs(30);

/// What the fake upstream answers for every name.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
    message.to_vec().expect("encode")
}

/// One UDP exchange with `server`; `None` when nothing came back in 2 s.
fn ask_udp(server: SocketAddr, packet: &[u8]) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    socket.send_to(packet, server).expect("send");
    let mut buf = [0; 4096];
    let len = socket.recv(&mut buf).ok()?;
    Some(Message::from_vec(&buf[..len]).expect("the answer parses"))
}

/// One query over TCP (length-framed).
fn ask_tcp(server: SocketAddr, packet: &[u8]) -> Message {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(4)))
        .expect("timeout");
    let len = u16::try_from(packet.len()).expect("small");
    stream.write_all(&len.to_be_bytes()).expect("write");
    stream.write_all(packet).expect("write");
    let mut len = [0; 2];
    stream.read_exact(&mut len).expect("answer length");
    let mut answer = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).expect("answer");
    Message::from_vec(&answer).expect("the answer parses")
}

/// The A records of an answer, as text.
fn addresses(message: &Message) -> Vec<String> {
    message
        .answers()
        .iter()
        .map(|r| r.data().to_string())
        .collect()
}

/// A resolver on 127.0.0.1 that answers every A query with
/// [`UPSTREAM_ANSWER`], until the flag is cleared.
fn fake_upstream() -> (SocketAddr, Arc<AtomicBool>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let addr = socket.local_addr().expect("addr");
    let running = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&running);
    std::thread::spawn(move || {
        let mut buf = [0; 4096];
        while flag.load(Ordering::Relaxed) {
            let Ok((len, client)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(request) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let mut reply = Message::new();
            reply
                .set_id(request.id())
                .set_message_type(MessageType::Response)
                .add_queries(request.queries().iter().cloned());
            for q in request.queries() {
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(UPSTREAM_ANSWER)),
                ));
            }
            let _ = socket.send_to(&reply.to_vec().expect("encode"), client);
        }
    });
    (addr, running)
}

fn vip(cluster: &Cluster, service: &str) -> String {
    cluster
        .json(0, &["service", "inspect", service])
        .expect("inspect")["vip"]
        .as_str()
        .expect("vip")
        .to_owned()
}

/// Waits until `name` resolves to `expected` over UDP.
fn wait_resolves(server: SocketAddr, name: &str, expected: &str) {
    wait_for(
        &format!("{name} to resolve to {expected}"),
        WAIT,
        || {
            let answer = ask_udp(server, &query(name, 9))?;
            (addresses(&answer) == [expected]).then_some(())
        },
        || format!("{:?}", ask_udp(server, &query(name, 9))),
    );
}

#[test]
fn names_follow_the_registry_and_others_go_upstream() {
    let (upstream, running) = fake_upstream();
    let upstream_arg = upstream.to_string();
    let cluster = Cluster::bootstrap(&["--dns-upstream", &upstream_arg], None);
    let dns = cluster.dns_addr();
    let port = free_port_on_all(&cluster).to_string();
    let (code, _, err) = cluster.lbctl(0, &["service", "create", "db", "-p", &port]);
    assert_eq!(code, 0, "{err}");
    let db = vip(&cluster, "db");

    // A stack's service, for its short name.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("compose.yml");
    let redis_port = free_port_on_all(&cluster);
    std::fs::write(
        &file,
        format!(
            "services:\n  redis:\n    command: \"sleep 600\"\n    ports: [\"{redis_port}:6379\"]\n"
        ),
    )
    .expect("write");
    // Detached: `redis` never listens (only its name and VIP matter
    // here), so following it would end in its failed health check.
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "stack",
            "deploy",
            "-d",
            "-c",
            file.to_str().expect("utf-8"),
            "app",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let redis = vip(&cluster, "app-redis");

    wait_resolves(dns, "db.", &db);
    let answer = ask_udp(dns, &query("DB.lbmesh.internal.", 10)).expect("an answer");
    assert_eq!(
        (answer.id(), answer.response_code()),
        (10, ResponseCode::NoError)
    );
    assert!(answer.authoritative());
    assert_eq!(addresses(&answer), [db.as_str()]);
    wait_resolves(dns, "redis.app.lbmesh.internal.", &redis);
    let answer = ask_tcp(dns, &query("app-redis.lbmesh.internal.", 11));
    assert_eq!(addresses(&answer), [redis.as_str()]);
    let answer = ask_udp(dns, &query("redis.lbmesh.internal.", 12)).expect("an answer");
    assert_eq!(answer.response_code(), ResponseCode::NXDomain);

    // Not the cluster's: the upstream's answer, over UDP and TCP.
    let answer = ask_udp(dns, &query("example.com.", 13)).expect("an answer");
    assert_eq!(answer.id(), 13);
    assert_eq!(addresses(&answer), [UPSTREAM_ANSWER.to_string()]);

    // Garbage with a header: FORMERR with its id; a burst of random
    // packets changes nothing.
    let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xff; 20]);
    let answer = ask_udp(dns, &garbage).expect("an answer");
    assert_eq!(
        (answer.id(), answer.response_code()),
        (0xabcd, ResponseCode::FormErr)
    );
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut rng = fastrand::Rng::with_seed(53);
    for _ in 0..2_000 {
        let mut packet = query("db.lbmesh.internal.", rng.u16(..));
        for _ in 0..rng.usize(1..8) {
            let at = rng.usize(..packet.len());
            packet[at] = rng.u8(..);
        }
        packet.truncate(rng.usize(..=packet.len()));
        sender.send_to(&packet, dns).expect("send");
    }
    wait_resolves(dns, "db.lbmesh.internal.", &db);

    // Removed: NXDOMAIN, soon.
    let (code, _, err) = cluster.lbctl(0, &["service", "rm", "db"]);
    assert_eq!(code, 0, "{err}");
    wait_for(
        "db to be NXDOMAIN",
        Duration::from_secs(5),
        || {
            let answer = ask_udp(dns, &query("db.lbmesh.internal.", 14))?;
            (answer.response_code() == ResponseCode::NXDomain).then_some(())
        },
        String::new,
    );
    running.store(false, Ordering::Relaxed);
}

/// Whether `name` resolves to `expected` from each of `sockets` fresh
/// client sockets: every node binds the responder's address with
/// `SO_REUSEPORT`, and the kernel spreads clients over them by address
/// and port, so a few dozen reach each node of a cluster.
fn resolves_from_every_socket(
    server: SocketAddr,
    name: &str,
    expected: &str,
    sockets: u16,
) -> bool {
    (0..sockets).all(|id| {
        ask_udp(server, &query(name, id)).is_some_and(|answer| addresses(&answer) == [expected])
    })
}

#[test]
fn every_node_answers_under_the_domain_the_cluster_was_bootstrapped_with() {
    let (upstream, running) = fake_upstream();
    let upstream_arg = upstream.to_string();
    let mut cluster = Cluster::bootstrap(
        &["--dns-upstream", &upstream_arg, "--dns-domain", "corp.test"],
        None,
    );
    // The joiners name another domain: the cluster's holds.
    cluster.extra_args = [
        "--dns-upstream",
        &upstream_arg,
        "--dns-domain",
        "other.test",
    ]
    .map(str::to_owned)
    .to_vec();
    cluster.join_managers(3);
    let dns = cluster.dns_addr();
    let port = free_port_on_all(&cluster).to_string();
    let (code, _, err) = cluster.lbctl(0, &["service", "create", "db", "-p", &port]);
    assert_eq!(code, 0, "{err}");
    let db = vip(&cluster, "db");
    wait_for(
        "every node to answer db.corp.test",
        WAIT,
        || resolves_from_every_socket(dns, "db.corp.test.", &db, 30).then_some(()),
        || format!("{:?}", ask_udp(dns, &query("db.corp.test.", 9))),
    );
    // The joiners' own flag named a domain that is not the cluster's:
    // its names go upstream like any other.
    let answer = ask_udp(dns, &query("db.other.test.", 10)).expect("an answer");
    assert_eq!(addresses(&answer), [UPSTREAM_ANSWER.to_string()]);

    // Without the bootstrapping node, the joiners alone answer.
    cluster.kill(0);
    assert!(
        resolves_from_every_socket(dns, "db.corp.test.", &db, 30),
        "a joiner answers db.corp.test otherwise: {:?}",
        ask_udp(dns, &query("db.corp.test.", 11))
    );
    running.store(false, Ordering::Relaxed);
}

/// Runs `script` with `sh -c` in the container of `service`'s first task
/// on this node; `(status, stdout)`.
fn exec_in(container: &str, script: &str) -> (i32, String) {
    let out = Command::new("docker")
        .args(["exec", container, "sh", "-c", script])
        .output()
        .expect("docker exec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The ids of the running containers of `service`'s serving tasks on
/// `cluster`'s nodes (other tests may run a stack `app` on the same
/// engine).
fn containers_of(cluster: &Cluster, service: &str) -> Vec<String> {
    // By task id (random per task): node names repeat across test runs,
    // and containers of an earlier run may still be on the engine.
    serving(&tasks(cluster, 0, service))
        .iter()
        .filter_map(|task| {
            let id = task["id"].as_str()?;
            let out = Command::new("docker")
                .args([
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=io.lbmesh.task={id}"),
                ])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn containers_of_a_stack_reach_each_other_by_name_and_vip() {
    if !require_docker() {
        return;
    }
    ensure_test_images().expect("test images");
    let mut cluster = Cluster::form_for_containers(FAST_HEARTBEATS);
    let range = cluster.vip_range();

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("docker-compose.yml");
    let web = free_port_on_all(&cluster);
    std::fs::write(
        &file,
        format!(
            "services:\n  web:\n    image: lbmesh-test:v1\n    ports: [\"{web}:80\"]\n    \
             deploy: {{mode: global}}\n  \
             redis:\n    image: lbmesh-test:v2\n    expose: [\"80\"]\n"
        ),
    )
    .expect("write");
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "stack",
            "deploy",
            "-c",
            file.to_str().expect("utf-8"),
            "app",
        ],
    );
    assert_eq!(code, 0, "{err}");
    wait_serving(&cluster, "app-web", 3, WAIT);
    wait_serving(&cluster, "app-redis", 1, WAIT);
    let redis_vip = vip(&cluster, "app-redis");
    let web_containers = wait_for(
        "a container of app-web on every node",
        WAIT,
        || Some(containers_of(&cluster, "app-web")).filter(|all| all.len() == 3),
        String::new,
    );

    // Every node gives its containers the cluster's resolver, joiners
    // too (they start before the registry's range reaches them).
    let dns = cluster.dns_addr().ip().to_string();
    for container in &web_containers {
        let (_, resolv) = exec_in(container, "cat /etc/resolv.conf");
        assert!(resolv.contains(&format!("nameserver {dns}")), "{resolv}");
        assert!(
            resolv.contains("search app.lbmesh.internal lbmesh.internal"),
            "{resolv}"
        );
    }
    let container = &web_containers[0];
    // By its short name, then by its VIP.
    for target in ["redis", redis_vip.as_str()] {
        let page = wait_for(
            &format!("web's container to fetch http://{target}/"),
            WAIT,
            || {
                let (status, out) =
                    exec_in(container, &format!("busybox wget -qO- http://{target}/"));
                (status == 0).then_some(out)
            },
            || exec_in(container, &format!("busybox nslookup {target} {dns} 2>&1")).1,
        );
        assert!(page.starts_with("v2 "), "{target}: {page}");
    }

    let (code, _, err) = cluster.lbctl(0, &["service", "rm", "app-redis"]);
    assert_eq!(code, 0, "{err}");
    wait_for(
        "redis to be NXDOMAIN inside web's container",
        Duration::from_secs(10),
        || {
            let (_, out) = exec_in(
                container,
                &format!("busybox nslookup redis.app.lbmesh.internal {dns} 2>&1"),
            );
            out.contains("NXDOMAIN").then_some(())
        },
        || exec_in(container, &format!("busybox nslookup redis {dns} 2>&1")).1,
    );
    let (code, _, err) = cluster.lbctl(0, &["stack", "rm", "app"]);
    assert_eq!(code, 0, "{err}");
    for n in 0..3 {
        cluster.stop(n);
    }
    assert!(!range_is_local(&range), "the route outlived every lbd");
}
