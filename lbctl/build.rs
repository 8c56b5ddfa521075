//! Puts the commit lbctl is built from into `LBCTL_COMMIT` for
//! `lbctl --version`: `git rev-parse --short=12 HEAD`, or `unknown` outside a git checkout (a source
//! tarball, a build without git).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).filter(|c| !c.is_empty());
    let version = commit.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LBCTL_COMMIT={version}");
    // Rebuild when HEAD moves: a checkout changes HEAD, a commit the branch.
    if let Some(file) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={file}");
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(file) = git(&["rev-parse", "--git-path", &reference]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
