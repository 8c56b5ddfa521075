//! Test images, built locally (there is no registry): `docker import` of a
//! tiny root filesystem holding Debian's static busybox, whose httpd serves a
//! page naming the container.
//!
//! - `lbmesh-test:v1` / `:v2`: `httpd` on port 80, page `v1 <hostname>` /
//!   `v2 <hostname>` (the hostname is the container's short id);
//! - `lbmesh-test:crash`: exits with status 1 at once;
//! - `lbmesh-test:udp-echo` ([`ensure_udp_echo_image`]): the same busybox
//!   and `/bin/udp_load` (`loadtest/udp_load.rs`, linked statically), whose
//!   `echo ADDR THREADS` answers every datagram with itself (busybox's nc
//!   has no UDP).
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether a Docker engine answers. With `CI=true` a missing engine is a
/// failure, never a skip.
pub fn require_docker() -> bool {
    let answers = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !answers {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but no Docker engine answers `docker info`; .ci/run starts dockerd"
        );
        eprintln!("skipped: no Docker engine answers (start dockerd --userland-proxy=false)");
    }
    answers
}

fn image_exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn import(rootfs: &Path, tag: &str, cmd: &str) -> Result<(), String> {
    let tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("tar: {e}"))?;
    let stdout = tar.stdout.ok_or("tar: no stdout")?;
    let out = Command::new("docker")
        .args(["import", "-c", &format!("CMD {cmd}"), "-", tag])
        .stdin(stdout)
        .output()
        .map_err(|e| format!("docker import: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker import {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Builds the test images that do not exist yet.
pub fn ensure_test_images() -> Result<(), String> {
    let page = |version: &str| {
        format!(
            r#"["/bin/sh","-c","echo \"{version} $(hostname)\" > /www/index.html && exec httpd -f -p 80 -h /www"]"#
        )
    };
    let images = [
        ("lbmesh-test:v1", page("v1")),
        ("lbmesh-test:v2", page("v2")),
        (
            "lbmesh-test:crash",
            r#"["/bin/sh","-c","exit 1"]"#.to_owned(),
        ),
    ];
    let missing: Vec<&(&str, String)> = images
        .iter()
        .filter(|(tag, _)| !image_exists(tag))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let rootfs = busybox_rootfs()?;
    for (tag, cmd) in missing {
        import(rootfs.path(), tag, cmd)?;
    }
    Ok(())
}

/// A root filesystem of Debian's static busybox and a few applets.
fn busybox_rootfs() -> Result<tempfile::TempDir, String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("busybox is not installed (apt-get install busybox-static)")?;
    let rootfs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = rootfs.path();
    for dir in ["bin", "www", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(busybox, root.join("bin/busybox")).map_err(|e| format!("copy busybox: {e}"))?;
    for applet in ["sh", "httpd", "hostname", "echo", "cat", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .map_err(|e| format!("symlink {applet}: {e}"))?;
    }
    Ok(rootfs)
}

/// The UDP echo image's tag.
pub const UDP_ECHO_IMAGE: &str = "lbmesh-test:udp-echo";

/// Builds [`UDP_ECHO_IMAGE`] if it does not exist: `udp_load` compiled
/// with this toolchain's `rustc`, statically linked, into the busybox root.
pub fn ensure_udp_echo_image() -> Result<(), String> {
    if image_exists(UDP_ECHO_IMAGE) {
        return Ok(());
    }
    let rootfs = busybox_rootfs()?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadtest/udp_load.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc)
        .args(["-O", "-C", "target-feature=+crt-static", "-o"])
        .arg(rootfs.path().join("bin/udp_load"))
        .arg(&source)
        .output()
        .map_err(|e| format!("rustc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rustc {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    import(
        rootfs.path(),
        UDP_ECHO_IMAGE,
        r#"["/bin/udp_load","echo","0.0.0.0:5353","1"]"#,
    )
}
