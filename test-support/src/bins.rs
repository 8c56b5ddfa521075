//! The workspace's binaries, for tests that run them as users do.
//!
//! A test binary lives in `target/<profile>/deps/`; the workspace's
//! binaries are built next to that folder. `cargo test --workspace` builds
//! `lbd` and `lbctl` before any test runs (each package has integration
//! tests, which makes cargo build its binaries).

use std::path::PathBuf;

/// The path of the workspace binary `name`; panics with what to build when
/// it is missing.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing; build it first: cargo build -p {name} (cargo test --workspace does)",
        path.display()
    );
    path
}

/// The `lbd` daemon binary.
pub fn lbd() -> PathBuf {
    bin("lbd")
}
