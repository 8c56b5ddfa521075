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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};

use crate::eof::pass_eof;
use crate::error::PumpError;
use crate::fd::Connection;
use crate::tally::Tally;

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

/// Forwards `src` to `dst` through `pipe` until EOF (passed on by
/// [`pass_eof`]) or an error. Short transfers clear readiness as in
/// `forward`.
pub async fn pump(
    src: &Connection,
    dst: &Connection,
    pipe: Pipe,
    counter: Tally<'_>,
    progress: &AtomicU64,
    one_eof_passed: &AtomicBool,
) -> Result<(), PumpError> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        let mut ready = src.readable().await.map_err(PumpError::Read)?;
        let moved = ready.try_io(|stream| {
            splice(stream.get_ref(), None, &pipe.write, None, PIPE_CHUNK, flags)
                .map_err(io::Error::from)
        });
        let n = match moved {
            Ok(Ok(0)) => {
                pass_eof(dst, one_eof_passed);
                pipe.recycle();
                return Ok(());
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(PumpError::Read(e)),
            Err(_would_block) => continue,
        };
        if n < PIPE_CHUNK {
            ready.clear_ready();
        }
        drop(ready);
        progress.fetch_add(1, Ordering::Relaxed);
        let mut pending = n;
        while pending > 0 {
            let mut ready = dst.writable().await.map_err(PumpError::Write)?;
            let moved = ready.try_io(|stream| {
                splice(&pipe.read, None, stream.get_ref(), None, pending, flags)
                    .map_err(io::Error::from)
            });
            match moved {
                Ok(Ok(0)) => return Err(PumpError::Write(io::ErrorKind::WriteZero.into())),
                Ok(Ok(m)) => {
                    if m < pending {
                        ready.clear_ready();
                    }
                    pending -= m;
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(PumpError::Write(e)),
                Err(_would_block) => {}
            }
        }
        counter.add(n);
    }
}
