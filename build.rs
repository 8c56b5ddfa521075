//! Stamps the commit lbd was built from into `LBMESH_COMMIT` (shown by
//! `lbmesh_build_info`): the `LBMESH_COMMIT` environment variable when set
//! (a Docker build has no `.git`), else `git rev-parse`, else `unknown`.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=LBMESH_COMMIT");
    let commit = std::env::var("LBMESH_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: the HEAD file, the ref it names and
            // the packed refs (only those that exist: a missing file would
            // rerun this script on every build).
            let names = [
                Some("HEAD".to_owned()),
                git(&["symbolic-ref", "-q", "HEAD"]),
                Some("packed-refs".to_owned()),
            ];
            for name in names.into_iter().flatten() {
                if let Some(file) = git(&["rev-parse", "--git-path", &name]) {
                    if std::path::Path::new(&file).exists() {
                        println!("cargo:rerun-if-changed={file}");
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LBMESH_COMMIT={commit}");
}
