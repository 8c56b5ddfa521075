//! `lbctl stack` against a one-node cluster (one `lbd` on 127.A.B.1) with
//! process tasks, so no Docker engine is needed: deploy a two-service
//! compose file, redeploy it unchanged (nothing restarts) and with one
//! service changed (only that one rolls; the other's tasks keep their
//! ids), drop a service with and without `--prune`, refuse bad files (a
//! YAML syntax error, an unknown top-level key, a port out of range, a
//! protocol other than tcp and udp, a name that is not a DNS label) and a
//! clash with a service outside the stack with the registry unchanged,
//! list with `stack ls|services|ps`, and `stack rm`. Deploy follows what
//! it wrote to convergence: a task that fails fails the deploy naming it,
//! `--timeout` bounds the wait, `-d` returns at once; a udp port deploys.
//!
//! With a Docker engine, the example file (`examples/docker-compose.yml`)
//! on three nodes whose VIPs containers reach: both services serve on
//! every node, the front's container on every node reaches `api` by its
//! compose name (and so does the front's page), its container
//! labels, exec-form command and Docker healthcheck reach the containers,
//! a redeploy of the same file restarts nothing, one with a new image for
//! the front rolls only the front with no failed request under a client
//! loop, and `stack rm` removes the containers.
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use test_support::cluster::*;
use test_support::http::get;
use test_support::images::{ensure_test_images, require_docker};
use test_support::mesh::{assert_no_failures, live, tasks, wait_serving, ClientLoop};
use test_support::wait::wait_for;

const WAIT: Duration = Duration::from_secs(30);

/// A process task that serves `PAGE` over HTTP on its HOST:PORT. `$$` is
/// compose's literal `$`, so the shell sees `$d`, `$HOST` and `$PORT`.
fn server(page: &str) -> String {
    format!(
        "d=$$(mktemp -d) && echo {page} > $$d/index.html && exec busybox httpd -f -p $$HOST:$$PORT -h $$d"
    )
}

/// The compose file: `web` (its page from `${WEB_PAGE:-web-v1}`, so the
/// default of an unset variable is used) and `api`, unless left out.
fn compose(web: u16, api: Option<(u16, &str)>) -> String {
    let mut text = format!(
        "version: \"3.8\"\nservices:\n  web:\n    command: \"{}\"\n    ports: [\"{web}:80\"]\n    \
         build: .\n    deploy:\n      replicas: 2\n      update_config:\n        order: start-first\n",
        server("${WEB_PAGE:-web-v1}")
    );
    if let Some((port, page)) = api {
        text.push_str(&format!(
            "  api:\n    command: \"{}\"\n    ports:\n      - target: 80\n        published: {port}\n    \
             x-lbmesh:\n      drain_timeout: 0s\n",
            server(page)
        ));
    }
    text
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).expect("write compose file");
    path.to_str().expect("utf-8 path").to_owned()
}

fn deploy(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["stack", "deploy"];
    all.extend_from_slice(args);
    cluster.lbctl(0, &all)
}

/// The ids of a service's tasks wanted running, sorted.
fn live_ids(cluster: &Cluster, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = live(&tasks(cluster, 0, service))
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

fn page(cluster: &Cluster, port: u16) -> Result<String, String> {
    get(SocketAddr::new(cluster.ip(0), port))
}

fn services(cluster: &Cluster) -> Value {
    cluster.json(0, &["service", "ls"]).expect("service ls")
}

#[test]
fn a_stack_deploys_redeploys_prunes_and_is_removed() {
    let cluster = Cluster::bootstrap(&[], None);
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("docker-compose.yml");
    let (web, api) = (free_port_on_all(&cluster), free_port_on_all(&cluster));

    // First deploy: both services are created and serve their pages.
    let path = write(&file, &compose(web, Some((api, "api-v1"))));
    let (code, out, err) = deploy(&cluster, &["-c", &path, "app"]);
    assert_eq!(code, 0, "{err}");
    // The plan, the summary, then each written service followed until it
    // runs.
    assert!(
        out.starts_with(
            "app-api: create\napp-web: create\napplied: 2 created, 0 updated, 0 unchanged, 0 removed\n\
             overall progress: 0 out of 1 tasks\n"
        ) && out.contains("\noverall progress: 2 out of 2 tasks\n")
            && out.ends_with(
                "verify: Service app-api converged\nverify: Service app-web converged\n"
            ),
        "{out}"
    );
    assert_eq!(err, "Ignoring unsupported options: build\n");
    wait_serving(&cluster, "app-web", 2, WAIT);
    wait_serving(&cluster, "app-api", 1, WAIT);
    assert_eq!(page(&cluster, web).as_deref(), Ok("web-v1"));
    assert_eq!(page(&cluster, api).as_deref(), Ok("api-v1"));
    let labels = &cluster
        .json(0, &["service", "inspect", "app-web"])
        .expect("inspect")["spec"]["labels"];
    assert_eq!(labels["com.docker.stack.namespace"], "app", "{labels}");

    // stack ls, services, ps.
    let (code, out, _) = cluster.lbctl(0, &["stack", "ls"]);
    assert_eq!(code, 0);
    assert_eq!(out, "NAME   SERVICES\napp    2\n");
    let (_, out, _) = cluster.lbctl(0, &["stack", "services", "app", "-q"]);
    assert_eq!(out, "app-api\napp-web\n");
    let web_ids = live_ids(&cluster, "app-web");
    let api_ids = live_ids(&cluster, "app-api");
    let (_, out, _) = cluster.lbctl(0, &["stack", "ps", "app", "-q"]);
    let mut listed: Vec<String> = out.lines().map(str::to_owned).collect();
    listed.sort();
    let mut all_ids = [web_ids.clone(), api_ids.clone()].concat();
    all_ids.sort();
    assert_eq!(listed, all_ids);

    // The same file again: nothing changes, nothing restarts.
    let (code, out, err) = deploy(&cluster, &["-c", &path, "app"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "app-api: unchanged\napp-web: unchanged\napplied: 0 created, 0 updated, 2 unchanged, 0 removed\n"
    );

    // api changes: only api rolls; web's tasks keep their ids.
    let path = write(&file, &compose(web, Some((api, "api-v2"))));
    let (code, out, err) = deploy(&cluster, &["-c", &path, "app"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("app-api: update\n    command: ") && out.contains("app-web: unchanged\n"),
        "{out}"
    );
    assert!(
        out.contains("applied: 0 created, 1 updated, 1 unchanged, 0 removed\n")
            && out.ends_with("verify: Service app-api converged\n")
            && !out.contains("app-web converged"),
        "{out}"
    );
    wait_for(
        "api to answer with its new page",
        WAIT,
        || (page(&cluster, api).as_deref() == Ok("api-v2")).then_some(()),
        || cluster.lbctl(0, &["stack", "ps", "app"]).1,
    );
    wait_serving(&cluster, "app-api", 1, WAIT);
    assert_ne!(live_ids(&cluster, "app-api"), api_ids, "api did not roll");
    assert_eq!(live_ids(&cluster, "app-web"), web_ids, "web restarted");
    assert_eq!(tasks(&cluster, 0, "app-web").len(), 2, "web got new tasks");

    // A bad file and a clash change nothing.
    let before = services(&cluster);
    let bad = dir.path().join("bad.yml");
    let port = format!("    command: x\n    ports: [\"{web}:80\"]\n");
    for (text, error) in [
        (
            format!("services:\n  web:\n   image: a\n{port}"),
            "mapping values are not allowed in this context at line 4 column 12".to_owned(),
        ),
        (
            format!("services:\n  web:\n{port}servers: {{}}\n"),
            "unknown top-level key \"servers\" (a compose file has version, name, services, \
             networks, volumes, configs, secrets and x- extensions)"
                .to_owned(),
        ),
        (
            "services:\n  web:\n    command: x\n    ports: [\"70000:80\"]\n".to_owned(),
            "services.web.ports[0]: port 70000 is out of range 1-65535".to_owned(),
        ),
        (
            "services:\n  web:\n    command: x\n    ports: [\"5353:53/sctp\"]\n".to_owned(),
            "services.web.ports[0]: protocol \"sctp\" is not tcp or udp".to_owned(),
        ),
        (
            format!("services:\n  Web_1:\n{port}"),
            "services.Web_1: \"Web_1\" contains 'W'; use lowercase letters, digits and '-'"
                .to_owned(),
        ),
    ] {
        let bad = write(&bad, &text);
        let (code, out, err) = deploy(&cluster, &["-c", &bad, "app"]);
        assert_eq!((code, out.as_str()), (1, ""), "{text}: {err}");
        assert_eq!(err, format!("Error: {bad}: {error}\n"), "{text}");
        assert_eq!(services(&cluster), before, "{text}: the registry changed");
    }
    let lone = free_port_on_all(&cluster);
    let (code, _, err) = cluster.lbctl(
        0,
        &[
            "service",
            "create",
            "lone",
            "--endpoint",
            "127.0.0.1:9",
            "-p",
            &lone.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let with_lone = services(&cluster);
    let clash = write(
        &dir.path().join("clash.yml"),
        &compose(web, Some((lone, "x"))).replace("api:", "db:"),
    );
    let (code, _, err) = deploy(&cluster, &["-c", &clash, "app"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "Ignoring unsupported options: build\n\
             Error: {clash}: services.db.ports: published port {lone}/tcp is already published by service lone\n"
        )
    );
    assert_eq!(
        services(&cluster),
        with_lone,
        "a refused deploy changed the registry"
    );
    let (code, _, _) = cluster.lbctl(0, &["service", "rm", "lone"]);
    assert_eq!(code, 0);
    assert_eq!(services(&cluster), before);

    // apply -f points a compose file at stack deploy.
    let (code, _, err) = cluster.lbctl(0, &["apply", "-f", &path]);
    assert_eq!(code, 1);
    assert!(err.contains("lbctl stack deploy -c"), "{err}");

    // api leaves the file: kept without --prune, removed with it.
    let path = write(&file, &compose(web, None));
    let (code, out, err) = deploy(&cluster, &["-c", &path, "app"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "app-web: unchanged\napplied: 0 created, 0 updated, 1 unchanged, 0 removed\n"
    );
    let (code, out, err) = deploy(&cluster, &["-c", &path, "--prune", "app"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "app-web: unchanged\napp-api: remove\napplied: 0 created, 0 updated, 1 unchanged, 1 removed\n"
    );
    assert_eq!(service_names(&services(&cluster)), ["app-web"]);
    assert_eq!(live_ids(&cluster, "app-web"), web_ids, "web restarted");

    // stack rm removes every service of the stack, and their tasks.
    let (code, out, err) = cluster.lbctl(0, &["stack", "rm", "app"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "Removing service app-web\n");
    assert_eq!(service_names(&services(&cluster)), Vec::<String>::new());
    wait_for(
        "web's published port to close",
        WAIT,
        || page(&cluster, web).is_err().then_some(()),
        String::new,
    );
    let (code, out, _) = cluster.lbctl(0, &["stack", "ls"]);
    assert_eq!((code, out.as_str()), (0, "NAME   SERVICES\n"));
    let (code, _, err) = cluster.lbctl(0, &["stack", "rm", "app"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "Error: nothing found in stack: app\n")
    );
}

/// `stack deploy` follows the services it writes: a task of the new spec
/// that fails ends it with exit 1 naming the task, a service that cannot
/// converge ends it at `--timeout` naming the slot, `-d` returns once the
/// writes are stored; a service with a udp port deploys and converges.
#[test]
fn stack_deploy_follows_its_services_to_convergence() {
    let cluster = Cluster::bootstrap(&[], None);
    let dir = tempfile::tempdir().expect("dir");
    let (web, dns) = (free_port_on_all(&cluster), free_port_on_all(&cluster));
    let good = write(
        &dir.path().join("good.yml"),
        &format!(
            "services:\n  web:\n    command: \"{}\"\n    ports: [\"{web}:80\"]\n  \
             dns:\n    command: \"exec sleep 600\"\n    ports: [\"{dns}:53/udp\"]\n",
            server("ok")
        ),
    );
    let (code, out, err) = deploy(&cluster, &["-c", &good, "ok"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.ends_with("verify: Service ok-dns converged\nverify: Service ok-web converged\n"),
        "{out}"
    );
    let spec = cluster
        .json(0, &["service", "inspect", "ok-dns"])
        .expect("inspect")["spec"]["ports"][0]
        .clone();
    assert_eq!(spec["protocol"], "udp", "{spec}");

    // A task that exits: the deploy fails naming it.
    let failing = write(
        &dir.path().join("failing.yml"),
        &format!(
            "services:\n  bad:\n    command: \"exit 3\"\n    ports: [\"{}:80\"]\n",
            free_port_on_all(&cluster)
        ),
    );
    let (code, out, err) = deploy(&cluster, &["-c", &failing, "broken"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("broken-bad: create\n"), "{out}");
    assert!(
        err.starts_with("Error: broken-bad: task broken-bad.1 (") && err.contains("failed"),
        "{err}"
    );

    // A service no node can take: --timeout ends the wait naming the slot;
    // -d returns at once with the plan only.
    let picky = write(
        &dir.path().join("picky.yml"),
        &format!(
            "services:\n  p:\n    command: x\n    ports: [\"{}:80\"]\n    deploy:\n      \
             placement:\n        constraints: [\"node.labels.gpu==yes\"]\n",
            free_port_on_all(&cluster)
        ),
    );
    let (code, out, err) = deploy(&cluster, &["-c", &picky, "-d", "picky"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "picky-p: create\napplied: 1 created, 0 updated, 0 unchanged, 0 removed\n"
    );
    let (code, out, err) = cluster.lbctl(0, &["stack", "rm", "picky"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = deploy(&cluster, &["-c", &picky, "--timeout", "2s", "picky"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("Error: picky-p: not converged within 2s") && err.contains("gpu==yes"),
        "{err}"
    );
}

/// This cluster's containers on the engine: `(id, service label)`, running
/// or not.
fn containers(cluster: &Cluster) -> Vec<(String, String)> {
    let info = cluster.json(0, &["cluster", "info"]).expect("cluster info");
    let id = info["id"].as_str().expect("cluster id").to_owned();
    let out = Command::new("docker")
        .args(["ps", "-a", "--no-trunc", "--format"])
        .arg("{{.ID}} {{.Label \"io.lbmesh.service\"}}")
        .args(["--filter", &format!("label=io.lbmesh.cluster={id}")])
        .output()
        .expect("docker ps");
    let mut found: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(id, service)| (id.to_owned(), service.to_owned()))
        .collect();
    found.sort();
    found
}

/// `docker inspect -f FORMAT ID`.
fn inspect(id: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_example_stack_runs_in_docker_on_every_node() {
    if !require_docker() {
        return;
    }
    ensure_test_images().expect("test images");
    // The front's page asks `api` by name: the containers need the
    // nodes' DNS, so VIPs they can reach.
    let cluster = Cluster::form_for_containers(FAST_HEARTBEATS);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/docker-compose.yml");
    let (web, api) = (free_port_on_all(&cluster), free_port_on_all(&cluster));
    let (web_port, api_port) = (web.to_string(), api.to_string());
    let env = [
        ("WEB_PORT", web_port.as_str()),
        ("API_PORT", api_port.as_str()),
    ];
    let deploy = || cluster.lbctl_env(0, &env, &["stack", "deploy", "-c", example, "demo"]);
    let (code, out, err) = deploy();
    assert_eq!(code, 0, "{err}");
    // The plan, then both services followed until they run.
    assert!(
        out.starts_with(
            "demo-api: create\ndemo-web: create\napplied: 2 created, 0 updated, 0 unchanged, 0 removed\n"
        ) && out.ends_with(
            "verify: Service demo-api converged\nverify: Service demo-web converged\n"
        ),
        "{out}"
    );
    wait_serving(&cluster, "demo-web", 3, Duration::from_secs(60));
    wait_serving(&cluster, "demo-api", 1, Duration::from_secs(60));
    let started = containers(&cluster);
    assert_eq!(started.len(), 4, "{started:?}");

    // Both published ports answer on every node.
    for n in 0..3 {
        let api_page = get(SocketAddr::new(cluster.ip(n), api)).expect("api answers");
        assert!(api_page.starts_with("v2 "), "node {n}: {api_page}");
        let page = get(SocketAddr::new(cluster.ip(n), web)).expect("web answers");
        let mut lines = page.lines();
        assert!(
            lines
                .next()
                .is_some_and(|front| front.starts_with("front "))
                && lines.next().is_some_and(|back| back.starts_with("v2 ")),
            "node {n}: the front did not reach api by name: {page}"
        );
    }

    // The file's container settings reached the containers, and the front
    // on every node reaches the back by its compose name.
    let mut front_nodes = Vec::new();
    for (id, service) in &started {
        if service == "demo-web" {
            front_nodes.push(inspect(id, "{{index .Config.Labels \"io.lbmesh.node\"}}"));
            let out = Command::new("docker")
                .args(["exec", id, "busybox", "wget", "-qO-", "http://api/"])
                .output()
                .expect("docker exec");
            let page = String::from_utf8_lossy(&out.stdout);
            assert!(page.starts_with("v2 "), "{id}: api by name: {page:?}");
            assert_eq!(
                inspect(id, "{{index .Config.Labels \"com.example.role\"}}"),
                "front"
            );
            assert_eq!(
                inspect(id, "{{index .Config.Cmd 0}} {{index .Config.Cmd 1}}"),
                "/bin/sh -c"
            );
        } else {
            assert_eq!(
                inspect(id, "{{json .Config.Healthcheck.Test}}"),
                r#"["CMD","busybox","wget","-qO-","http://localhost/"]"#
            );
            assert_eq!(inspect(id, "{{.State.Health.Status}}"), "healthy");
        }
    }
    front_nodes.sort();
    front_nodes.dedup();
    assert_eq!(
        front_nodes.len(),
        3,
        "a front on every node: {front_nodes:?}"
    );

    // The same file again restarts nothing.
    let starts = |list: &[(String, String)]| -> Vec<String> {
        list.iter()
            .map(|(id, _)| inspect(id, "{{.State.StartedAt}}"))
            .collect()
    };
    let before = starts(&started);
    let (code, out, err) = deploy();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "demo-api: unchanged\ndemo-web: unchanged\napplied: 0 created, 0 updated, 2 unchanged, 0 removed\n"
    );
    assert_eq!(containers(&cluster), started);
    assert_eq!(starts(&started), before, "a container restarted");

    // A new image for web rolls web only, with no failed request.
    let api_container: Vec<(String, String)> = started
        .iter()
        .filter(|(_, service)| service == "demo-api")
        .cloned()
        .collect();
    let api_started = starts(&api_container);
    let client = ClientLoop::start(cluster.mesh_addrs(web));
    std::thread::sleep(Duration::from_millis(500));
    let v2 = [env[0], env[1], ("WEB_TAG", "v2")];
    let (code, out, err) = cluster.lbctl_env(0, &v2, &["stack", "deploy", "-c", example, "demo"]);
    assert_eq!(code, 0, "{err}");
    // The plan, then the updated service (only) followed until it runs.
    assert!(
        out.starts_with(
            "demo-api: unchanged\ndemo-web: update\n    image: \"lbmesh-test:v1\" -> \"lbmesh-test:v2\"\n\
             applied: 0 created, 1 updated, 1 unchanged, 0 removed\n"
        ) && out.ends_with("verify: Service demo-web converged\n")
            && !out.contains("demo-api converged"),
        "{out}"
    );
    wait_for(
        "web's update to complete",
        Duration::from_secs(90),
        || {
            let service = cluster.json(0, &["service", "inspect", "demo-web"])?;
            (service["update"]["state"] == "completed").then_some(())
        },
        || cluster.lbctl(0, &["stack", "ps", "demo"]).1,
    );
    // Old tasks drain for 2 s (x-lbmesh drain_timeout) after they leave the tables.
    std::thread::sleep(Duration::from_secs(3));
    assert_no_failures("web's rolling update", &client.finish());
    wait_serving(&cluster, "demo-web", 3, Duration::from_secs(30));
    // The old containers go once drained and stopped.
    let web_images = || -> Vec<String> {
        containers(&cluster)
            .iter()
            .filter(|(_, service)| service == "demo-web")
            .map(|(id, _)| inspect(id, "{{.Config.Image}}"))
            .collect()
    };
    wait_for(
        "web's old containers to be removed",
        Duration::from_secs(30),
        || (web_images() == ["lbmesh-test:v2"; 3]).then_some(()),
        || format!("{:?}", web_images()),
    );
    let now = containers(&cluster);
    assert!(now.contains(&api_container[0]), "api was replaced: {now:?}");
    assert_eq!(starts(&api_container), api_started, "api restarted");

    // stack rm removes the services and their containers.
    let (code, out, err) = cluster.lbctl(0, &["stack", "rm", "demo"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "Removing service demo-api\nRemoving service demo-web\n"
    );
    wait_for(
        "the stack's containers to be removed",
        Duration::from_secs(30),
        || containers(&cluster).is_empty().then_some(()),
        || format!("{:?}", containers(&cluster)),
    );
}
