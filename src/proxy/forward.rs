//! Moving bytes both ways between a client and a backend.
//!
//! Each direction is a pump: wait until the source is readable, read into a
//! buffer, write it all to the destination. A pump borrows a buffer from a
//! per-thread pool only while data flows and gives it back when the source
//! runs dry, so an idle proxied connection holds no buffer at all. When a read
//! fills the whole buffer the flow is bulk, and on Linux the pump switches to
//! splice(2) through a pooled pipe (`splice`), which moves the bytes without
//! copying them through user space. On EOF a pump shuts down the destination's write side and
//! ends, while the other pump keeps going (TCP half-close). An error in either
//! direction ends the connection. Both pumps run in the connection's own task
//! next to an idle timer that fires when neither direction has moved a byte
//! for `idle_timeout`.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Per-direction buffer: large enough that a bulk transfer on loopback moves
/// in few syscalls, small enough that 10,000 busy connections stay under
/// 700 MiB. Idle connections hold none.
pub const BUFFER_SIZE: usize = 32 * 1024;

/// Buffers kept per thread for reuse; bounds what an idle period retains.
const POOLED_BUFFERS_PER_THREAD: usize = 64;

thread_local! {
    static BUFFER_POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A copy buffer borrowed from this thread's pool, returned on drop.
struct PooledBuffer(Box<[u8]>);

impl PooledBuffer {
    fn take() -> Self {
        let reused = BUFFER_POOL.with(|pool| pool.borrow_mut().pop());
        Self(reused.unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice()))
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        // An empty boxed slice does not allocate.
        let buf = std::mem::take(&mut self.0);
        BUFFER_POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED_BUFFERS_PER_THREAD {
                pool.push(buf);
            }
        });
    }
}

/// How a forwarded connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides sent EOF and every byte was delivered.
    Finished,
    /// No byte moved for the idle timeout.
    IdleTimeout,
}

/// Forwards until both directions are done, an error occurs, or the
/// connection is idle for `idle_timeout`.
pub async fn forward(
    client: &TcpStream,
    backend: &TcpStream,
    idle_timeout: Duration,
    bytes_in: &IntCounter,
    bytes_out: &IntCounter,
) -> io::Result<Outcome> {
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved in either direction.
    let last_activity = AtomicU64::new(0);
    let both = async {
        tokio::try_join!(
            pump(client, backend, bytes_in, start, &last_activity),
            pump(backend, client, bytes_out, start, &last_activity),
        )
    };
    tokio::select! {
        result = both => result.map(|_| Outcome::Finished),
        () = idle(start, &last_activity, idle_timeout) => Ok(Outcome::IdleTimeout),
    }
}

async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &IntCounter,
    start: Instant,
    last_activity: &AtomicU64,
) -> io::Result<()> {
    // Held only while data is flowing; returned to the pool whenever the
    // source runs dry, so an idle connection holds no buffer.
    let mut buffer: Option<PooledBuffer> = None;
    loop {
        let buf = match buffer.as_mut() {
            Some(buf) => buf,
            None => {
                src.readable().await?;
                buffer.insert(PooledBuffer::take())
            }
        };
        let n = match src.try_read(buf.as_mut()) {
            Ok(0) => {
                half_close(dst);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buffer = None;
                continue;
            }
            Err(e) => return Err(e),
        };
        last_activity.store(elapsed_ms(start), Ordering::Relaxed);
        write_all(dst, &buf.as_mut()[..n]).await?;
        counter.inc_by(n as u64);
        #[cfg(target_os = "linux")]
        if n == BUFFER_SIZE && super::splice::enabled() {
            // A full buffer means a bulk flow: move it kernel-side from now on.
            drop(buffer.take());
            if let Some(pipe) = super::splice::Pipe::take() {
                return super::splice::pump(src, dst, pipe, counter, start, last_activity).await;
            }
        }
    }
}

/// Writes all of `data` to `dst`, waiting for writability as needed.
pub async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Passes an EOF on: no more writes to `dst`, reads from it continue. A peer
/// that has already gone away makes this fail, which changes nothing.
pub(super) fn half_close(dst: &TcpStream) {
    let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
}

pub(super) fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Resolves once no byte has moved for `timeout`.
async fn idle(start: Instant, last_activity: &AtomicU64, timeout: Duration) {
    loop {
        let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let deadline = start + last + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}
