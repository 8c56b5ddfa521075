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

#[test]
fn lbctl_errors_exit_non_zero() {
    // fixed-port-ok: port 1 on loopback, where nothing listens.
    let out = lbctl(&["--host", "127.0.0.1:1", "service", "ls"]);
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
