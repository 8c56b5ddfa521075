//! lbctl's docker-like listing verbs and `apply -f`'s plan against a
//! one-node cluster (one `lbd` on 127.A.B.1): `-q`, `--filter`, several
//! names for `inspect` and `ps`, `node ps`, RFC 3339 times in JSON, and
//! `apply` printing its plan, `--dry-run` changing nothing and a `[node]`
//! table reported as ignored.
use std::time::Duration;

use test_support::cluster::*;
use test_support::mesh::wait_serving;

/// A task that serves HTTP on its HOST:PORT (busybox httpd), so its
/// default TCP check passes.
const SERVER: &str = "d=$(mktemp -d) && exec busybox httpd -f -p $HOST:$PORT -h $d";

fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let (code, out, err) = cluster.lbctl(0, args);
    assert_eq!(code, 0, "lbctl {args:?}: {err}");
    out
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn lists_take_quiet_filters_and_several_names() {
    let cluster = Cluster::bootstrap(&[], None);
    let port = free_port_on_all(&cluster).to_string();
    let second = free_port_on_all(&cluster).to_string();
    let third = free_port_on_all(&cluster).to_string();
    ok(
        &cluster,
        &[
            "service",
            "create",
            "web",
            "--command",
            SERVER,
            "--replicas",
            "2",
            "-p",
            &format!("{port}:80/tcp"),
        ],
    );
    ok(
        &cluster,
        &[
            "service",
            "create",
            "apigw",
            "--command",
            SERVER,
            "--mode",
            "global",
            "-p",
            &second,
        ],
    );
    ok(
        &cluster,
        &[
            "service",
            "create",
            "api",
            "--endpoint",
            "127.0.0.1:9",
            "-p",
            &third,
        ],
    );
    wait_serving(&cluster, "web", 2, Duration::from_secs(30));
    wait_serving(&cluster, "apigw", 1, Duration::from_secs(30));

    // service ls: -q, name (a prefix, either value), mode, and a key it lacks.
    assert_eq!(
        lines(&ok(&cluster, &["service", "ls", "-q"])),
        ["api", "apigw", "web"]
    );
    assert_eq!(
        lines(&ok(
            &cluster,
            &["service", "ls", "-q", "--filter", "name=ap"]
        )),
        ["api", "apigw"]
    );
    assert_eq!(
        lines(&ok(
            &cluster,
            &["service", "ls", "-q", "-f", "name=web", "-f", "name=api"]
        )),
        ["api", "apigw", "web"]
    );
    assert_eq!(
        lines(&ok(&cluster, &["service", "ls", "-q", "-f", "mode=global"])),
        ["apigw"]
    );
    let (code, out, err) = cluster.lbctl(0, &["service", "ls", "-f", "desired-state=running"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(
        err,
        "Error: filter: \"desired-state\" is not a filter here; use id, name, mode\n"
    );

    // service ls's ID column; ids are kept by updates and filter by prefix.
    let table = ok(&cluster, &["service", "ls"]);
    assert!(table.starts_with("ID "), "{table}");
    let api_id = cluster
        .json(0, &["service", "inspect", "api"])
        .expect("inspect")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(
        api_id.len() == 12 && api_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{api_id}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{api_id}   api "))),
        "{table}"
    );
    ok(
        &cluster,
        &["service", "update", "api", "--endpoint", "127.0.0.1:8"],
    );
    let after = cluster
        .json(0, &["service", "inspect", "api"])
        .expect("inspect");
    assert_eq!(after["id"], api_id.as_str(), "an update keeps the id");
    assert_eq!(after["version"], 2);
    assert_eq!(
        lines(&ok(
            &cluster,
            &["service", "ls", "-q", "-f", &format!("id={}", &api_id[..6])]
        )),
        ["api"]
    );

    // inspect: one name an object, several an array in the order given.
    let one = cluster
        .json(0, &["service", "inspect", "web"])
        .expect("inspect");
    assert_eq!(one["spec"]["name"], "web");
    let two = cluster
        .json(0, &["service", "inspect", "web", "api"])
        .expect("inspect two");
    let names: Vec<&str> = two
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["spec"]["name"].as_str())
        .collect();
    assert_eq!(names, ["web", "api"]);
    let (code, _, err) = cluster.lbctl(0, &["service", "inspect", "web", "nosuch"]);
    assert_ne!(code, 0);
    assert!(err.contains("nosuch"), "{err}");

    // ps: several services, -q, name and desired-state filters.
    let web = cluster.json(0, &["service", "ps", "web"]).expect("ps web");
    let web: Vec<&serde_json::Value> = web.as_array().expect("tasks").iter().collect();
    assert_eq!(web.len(), 2);
    let both = ok(&cluster, &["service", "ps", "-q", "web", "apigw"]);
    assert_eq!(lines(&both).len(), 3, "{both}");
    let slot1: Vec<&str> = web
        .iter()
        .filter(|t| t["slot"] == 1)
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(
        lines(&ok(
            &cluster,
            &["service", "ps", "-q", "web", "-f", "name=web.1"]
        )),
        slot1
    );
    assert_eq!(
        ok(
            &cluster,
            &["service", "ps", "-q", "web", "-f", "desired-state=shutdown"]
        ),
        ""
    );
    let (code, _, err) =
        cluster.lbctl(0, &["service", "ps", "web", "-f", "desired-state=accepted"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the value must be one of running, shutdown"),
        "{err}"
    );

    // Times are RFC 3339 UTC with milliseconds.
    for task in &web {
        let created = task["created_at"].as_str().expect("created_at is a string");
        assert_eq!(created.len(), "2026-12-01T15:54:00.123Z".len(), "{created}");
        assert!(
            created.ends_with('Z') && created.as_bytes()[10] == b'T',
            "{created}"
        );
    }

    // node ls and node ps.
    let node = cluster.json(0, &["node", "ls"]).expect("node ls");
    let (id, name) = (
        node[0]["id"].as_str().expect("id"),
        node[0]["name"].as_str().expect("name"),
    );
    assert_eq!(lines(&ok(&cluster, &["node", "ls", "-q"])), [id]);
    assert_eq!(ok(&cluster, &["node", "ls", "-q", "-f", "role=worker"]), "");
    assert_eq!(ok(&cluster, &["node", "ls", "-q", "-f", "label=zone"]), "");
    ok(&cluster, &["node", "update", name, "--label-add", "zone=a"]);
    assert_eq!(
        lines(&ok(
            &cluster,
            &["node", "ls", "-q", "-f", "node.label=zone=a"]
        )),
        [id]
    );
    assert_eq!(
        ok(&cluster, &["node", "ls", "-q", "-f", "label=zone=b"]),
        ""
    );
    let mut on_node = lines(&ok(&cluster, &["node", "ps", "-q", name]))
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    let mut expected = lines(&both)
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    on_node.sort();
    expected.sort();
    assert_eq!(on_node, expected, "node ps lists the node's tasks");
    let by_filter = ok(
        &cluster,
        &[
            "node",
            "ps",
            "-q",
            id,
            "-f",
            &format!("node={name}"),
            "-f",
            "name=apigw",
        ],
    );
    assert_eq!(lines(&by_filter).len(), 1, "{by_filter}");
    let table = ok(&cluster, &["node", "ps", name]);
    assert!(table.starts_with("ID "), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
}

#[test]
fn apply_prints_its_plan_and_dry_run_changes_nothing() {
    let cluster = Cluster::bootstrap(&[], None);
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("services.toml");
    let path = file.to_str().expect("utf-8 path");
    let write = |body: &String| std::fs::write(&file, body).expect("write file");
    let (web, db) = (free_port_on_all(&cluster), free_port_on_all(&cluster));
    write(&format!(
        "[node]\nname = \"edge\"\n\n[[service]]\nname = \"web\"\nports = [{{ published = {web} }}]\n\
         endpoints = [{{ address = \"127.0.0.1:9\" }}]\n\n\
         [[service]]\nname = \"db\"\nports = [{{ published = {db} }}]\nendpoints = [{{ address = \"127.0.0.1:7\" }}]\n",
    ));
    let notice = format!(
        "Notice: {path}: the [node] table is ignored: it configures one `lbd --config` process, not the cluster\n"
    );

    let (code, out, err) = cluster.lbctl(0, &["apply", "-f", path, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "web: create\ndb: create\ndry run: nothing changed\n");
    assert_eq!(err, notice);
    assert_eq!(
        ok(&cluster, &["service", "ls", "-q"]),
        "",
        "a dry run created something"
    );

    let (code, out, err) = cluster.lbctl(0, &["apply", "-f", path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "web: create\ndb: create\napplied: 2 created, 0 updated, 0 unchanged, 0 removed\n"
    );
    assert_eq!(
        lines(&ok(&cluster, &["service", "ls", "-q"])),
        ["db", "web"]
    );

    // The file changes web's endpoint and no longer names db.
    write(&format!(
        "[[service]]\nname = \"web\"\nports = [{{ published = {web} }}]\n\
         endpoints = [{{ address = \"127.0.0.1:8\", weight = 2 }}]\n"
    ));
    let before = cluster.json(0, &["service", "ls"]).expect("ls");
    let (code, out, err) = cluster.lbctl(0, &["apply", "-f", path, "--prune", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "web: update\n    endpoints: [{\"address\":\"127.0.0.1:9\"}] -> [{\"address\":\"127.0.0.1:8\",\"weight\":2}]\n\
         db: remove\ndry run: nothing changed\n"
    );
    assert_eq!(err, "", "no [node] table, no notice");
    assert_eq!(
        cluster.json(0, &["service", "ls"]).expect("ls"),
        before,
        "a dry run changed something"
    );

    let (code, out, err) = cluster.lbctl(0, &["apply", "-f", path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with("applied: 0 created, 1 updated, 0 unchanged, 0 removed\n"),
        "{out}"
    );
    let (code, out, _) = cluster.lbctl(0, &["apply", "-f", path, "--prune"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "web: unchanged\ndb: remove\napplied: 0 created, 0 updated, 1 unchanged, 1 removed\n"
    );
    assert_eq!(lines(&ok(&cluster, &["service", "ls", "-q"])), ["web"]);
}

/// `(role, raft)` of each node, by name.
fn roles(cluster: &Cluster) -> std::collections::BTreeMap<String, (String, String)> {
    let nodes = cluster.json(0, &["node", "ls"]).expect("node ls");
    nodes
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let text = |key: &str| n[key].as_str().unwrap_or_default().to_owned();
            (text("name"), (text("role"), text("raft")))
        })
        .collect()
}

#[test]
fn promote_and_demote_move_votes_and_keep_them_odd() {
    let cluster = Cluster::form();
    let leader = cluster.leader_index().expect("a leader");
    let ids: Vec<String> = (0..3)
        .map(|n| {
            cluster.json(n, &["cluster", "info"]).expect("info")["node_id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    let nodes = cluster.json(0, &["node", "ls"]).expect("node ls");
    let name_of = |n: usize| -> String {
        nodes
            .as_array()
            .expect("nodes")
            .iter()
            .find(|node| node["id"].as_str() == Some(ids[n].as_str()))
            .and_then(|node| node["name"].as_str())
            .expect("name")
            .to_owned()
    };
    let (lead, a, b) = (
        name_of(leader),
        name_of((leader + 1) % 3),
        name_of((leader + 2) % 3),
    );
    let voters = |cluster: &Cluster| {
        roles(cluster)
            .values()
            .filter(|(_, raft)| raft != "learner")
            .count()
    };
    assert_eq!(voters(&cluster), 3);

    // Demote a follower: two managers leave one vote (odd), the leader's.
    let out = ok(&cluster, &["node", "demote", &a]);
    assert_eq!(out, format!("{a} is now a worker\n"));
    let now = roles(&cluster);
    assert_eq!(now[&a], ("worker".to_owned(), "learner".to_owned()));
    assert_eq!(now[&b], ("manager".to_owned(), "learner".to_owned()));
    assert_eq!(now[&lead], ("manager".to_owned(), "leader".to_owned()));

    // Neither the leader nor the last manager can be demoted.
    let (code, _, err) = cluster.lbctl(0, &["node", "demote", &lead]);
    assert_eq!(code, 1);
    assert!(err.contains("leads the cluster"), "{err}");
    let (code, _, _) = cluster.lbctl(0, &["node", "demote", &b]);
    assert_eq!(code, 0, "b is a manager while the leader is one too");
    let (code, _, err) = cluster.lbctl(0, &["node", "demote", &lead]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is the last manager; promote another first"),
        "{err}"
    );

    // Promote both back: three managers, three votes.
    let out = ok(&cluster, &["node", "promote", &a, &b]);
    assert_eq!(out, format!("{a} is now a manager\n{b} is now a manager\n"));
    let now = roles(&cluster);
    assert!(now.values().all(|(role, _)| role == "manager"), "{now:?}");
    assert_eq!(voters(&cluster), 3, "{now:?}");
    // The cluster still commits writes through a former learner.
    let port = free_port_on_all(&cluster).to_string();
    let (code, _, err) = cluster.lbctl(
        (leader + 1) % 3,
        &[
            "service",
            "create",
            "after",
            "-p",
            &port,
            "--endpoint",
            "127.0.0.1:9",
        ],
    );
    assert_eq!(code, 0, "{err}");
}
