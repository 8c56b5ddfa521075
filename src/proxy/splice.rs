//! Bulk forwarding with splice(2) on Linux: socket → pipe → socket, so the
//! bytes never cross into user space.
//!
//! A pump switches here once a read fills its whole copy buffer (a bulk
//! flow); short request/response traffic stays on the copy path, where a
//! pipe would only add two syscalls per message. Pipes are pooled per thread
//! and reused when a flow ends with its pipe empty; a pipe that still holds
//! bytes (the flow ended by an error) is closed instead. Setting the
//! environment variable `LBD_SPLICE=0` keeps every flow on the copy path.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use prometheus::IntCounter;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::forward::{elapsed_ms, half_close};

/// Bytes moved per splice call; the kernel's default pipe capacity.
const PIPE_CHUNK: usize = 64 * 1024;

/// Pipes kept per thread for reuse.
const POOLED_PIPES_PER_THREAD: usize = 32;

thread_local! {
    static PIPE_POOL: std::cell::RefCell<Vec<Pipe>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether splice is on (it is unless `LBD_SPLICE=0`).
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("LBD_SPLICE").map_or(true, |v| v != "0"))
}

/// A non-blocking pipe, the kernel-side buffer of one direction.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pooled pipe or a new one; `None` when no pipe can be made (out of
    /// descriptors), in which case the caller keeps copying.
    pub fn take() -> Option<Self> {
        if let Some(pipe) = PIPE_POOL.with(|pool| pool.borrow_mut().pop()) {
            return Some(pipe);
        }
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).ok()?;
        Some(Self { read, write })
    }

    /// Returns an empty pipe to this thread's pool.
    fn recycle(self) {
        PIPE_POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED_PIPES_PER_THREAD {
                pool.push(self);
            }
        });
    }
}

/// Forwards `src` to `dst` through `pipe` until EOF (then half-closes `dst`)
/// or an error.
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: Pipe,
    counter: &IntCounter,
    start: Instant,
    last_activity: &AtomicU64,
) -> io::Result<()> {
    loop {
        src.readable().await?;
        let n = match src.try_io(Interest::READABLE, || {
            splice(
                src,
                None,
                &pipe.write,
                None,
                PIPE_CHUNK,
                SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
            )
            .map_err(io::Error::from)
        }) {
            Ok(0) => {
                half_close(dst);
                pipe.recycle();
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        last_activity.store(elapsed_ms(start), Ordering::Relaxed);
        let mut pending = n;
        while pending > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(
                    &pipe.read,
                    None,
                    dst,
                    None,
                    pending,
                    SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
                )
                .map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => pending -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        counter.inc_by(n as u64);
    }
}
