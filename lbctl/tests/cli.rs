//! The built `lbctl` binary on arguments that need no cluster: malformed
//! flags are clap's errors (exit code 2, the valid values listed), and a
//! command that cannot reach its host fails with `Error: ` and a non-zero
//! exit code.
use std::process::{Command, Output};

fn lbctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(args)
        .env_remove("LBCTL_HOST")
        .env_remove("LBCTL_TOKEN")
        .output()
        .expect("run lbctl")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_enum_values_list_the_valid_ones() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["service", "create", "web", "--algorithm", "nosuch"],
            "error: invalid value 'nosuch' for '--algorithm <ALGORITHM>'\n  \
             [possible values: round-robin, random, weighted, least-conn, maglev]\n",
        ),
        (
            &["service", "update", "web", "--update-order", "sideways"],
            "error: invalid value 'sideways' for '--update-order <UPDATE_ORDER>'\n  \
             [possible values: stop-first, start-first]\n",
        ),
        (
            &["node", "update", "node-a", "--availability", "asleep"],
            "error: invalid value 'asleep' for '--availability <AVAILABILITY>'\n  \
             [possible values: active, pause, drain]\n",
        ),
    ];
    for (args, expected) in cases {
        let out = lbctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.starts_with(expected), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// A control token of the right form (lbctl takes the CA digest from it
/// before it dials), for commands that never reach a server.
const WELL_FORMED_TOKEN: &str = concat!(
    "LBMCTL-2-",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
);

#[test]
fn lbctl_errors_exit_non_zero() {
    // fixed-port-ok: port 1 on loopback, where nothing listens.
    let out = lbctl(&[
        "--host",
        "127.0.0.1:1",
        "--token",
        WELL_FORMED_TOKEN,
        "service",
        "ls",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with("Error: cannot connect to 127.0.0.1:1: "),
        "{}",
        stderr(&out)
    );
    let out = lbctl(&["service", "scale", "web"]);
    assert!(
        !out.status.success(),
        "a malformed scale target was accepted"
    );
}

#[test]
fn publish_takes_tcp_and_udp_and_refuses_other_protocols() {
    // Parsed before anything is sent: the host is never dialled.
    let out = lbctl(&[
        "--host",
        "127.0.0.1:1",
        "service",
        "create",
        "web",
        "-p",
        "8080:80/sctp",
    ]); // fixed-port-ok: never dialled
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: invalid value '8080:80/sctp' for '--publish <SPEC>'"),
        "{}",
        stderr(&out)
    );
    // /tcp and /udp parse: the command gets as far as dialling the host.
    for spec in ["8080:80/tcp", "53:53/udp"] {
        let out = lbctl(&[
            "--host",
            "127.0.0.1:1",
            "--token",
            WELL_FORMED_TOKEN,
            "service",
            "create",
            "web",
            "-p",
            spec,
        ]); // fixed-port-ok: port 1, nothing listens
        assert!(
            stderr(&out).starts_with("Error: cannot connect to 127.0.0.1:1: "),
            "{spec}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn version_names_the_commit() {
    let out = lbctl(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let expected = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    assert_eq!(
        text,
        format!("lbctl {} (commit {expected})\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bash_completion_loads_and_completes_verbs() {
    let out = lbctl(&["completion", "bash"]);
    assert!(out.status.success());
    let script = tempfile_path("lbctl-completion.bash");
    std::fs::write(&script, &out.stdout).expect("write script");
    // Load it, then ask for the completions of `lbctl service ` as bash would.
    let check = format!(
        "source {} && COMP_WORDS=(lbctl service '') COMP_CWORD=2 COMP_LINE='lbctl service ' COMP_POINT=14 && _lbctl lbctl '' service && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let bash = Command::new("bash")
        .args(["--norc", "-c", &check])
        .output()
        .expect("run bash");
    let _ = std::fs::remove_file(&script);
    assert!(
        bash.status.success(),
        "{}",
        String::from_utf8_lossy(&bash.stderr)
    );
    let words = String::from_utf8_lossy(&bash.stdout).into_owned();
    for verb in ["create", "ls", "ps", "inspect", "rollback"] {
        assert!(words.lines().any(|w| w == verb), "{verb} not in {words}");
    }
    for shell in ["zsh", "fish"] {
        let out = lbctl(&["completion", shell]);
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
    }
}

#[test]
fn man_pages_cover_every_command() {
    let dir = tempfile_path("lbctl-man");
    let out = lbctl(&["man", "--dir", dir.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "lbctl.1",
        "lbctl-service-create.1",
        "lbctl-node-ps.1",
        "lbctl-apply.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie \\n(.g .ds Aq"), "{page} is not roff");
    }
    let create = std::fs::read_to_string(dir.join("lbctl-service-create.1")).expect("page");
    assert!(
        create.contains("Tasks to run (replicated mode)"),
        "--replicas undescribed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A path under the temp dir unique to this process.
fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", std::process::id()))
}
