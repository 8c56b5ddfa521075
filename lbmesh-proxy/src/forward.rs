//! Moving bytes both ways between a client and a backend.
//!
//! Each direction is a pump: wait until the source is readable, read into a
//! buffer, write it all to the destination. A read shorter than the buffer
//! means the socket was drained, so the pump clears its readiness at once and
//! waits for the next event instead of paying for a `read` that returns
//! `EAGAIN`; a short write clears writability the same way. A pump borrows a
//! buffer from a per-thread pool only while data flows and gives it back when
//! the source runs dry, so an idle proxied connection holds no buffer. When a
//! read fills the whole buffer the flow is bulk, and on Linux the pump
//! switches to splice(2) through a pooled pipe (`splice`), which moves the
//! bytes without copying them through user space.
//!
//! A service with `retry_on_empty` first runs [`first_reply`]: it forwards
//! the client's bytes while keeping a copy (one buffer at most) until the
//! backend answers. A backend that closes or resets before its first byte,
//! or (with a reply timeout) stays silent that long once it has bytes of
//! the client, leaves the copy to be resent to another backend; an answer,
//! a client EOF or a full buffer hands the connection over to the pumps.
//!
//! On EOF a pump shuts down the destination's write side and ends, while the
//! other pump keeps going (TCP half-close). The pump that sees the second EOF
//! skips the `shutdown`: the connection closes right after, and the close
//! sends the same FIN. When the poller has already reported the source's FIN
//! and a read stops short, the pump reads once more before writing: if that
//! returns 0, it writes the bytes with `MSG_MORE` (Linux) and passes the EOF
//! at once, so the FIN leaves in the same segment as the last bytes (a
//! server's reply followed by its close costs one segment and one ACK, not
//! two of each). An error in either direction ends the connection, after
//! the bytes read before it are passed on.
//! Both pumps run in the connection's task next to an idle timer. Progress
//! bumps a counter (no clock read on the data path); the timer checks it
//! every quarter of `idle_timeout` and closes the connection after four quiet
//! checks in a row, i.e. between 1 and 1.25 × `idle_timeout` after the last
//! byte moved.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustix::net::{send, SendFlags};

use crate::eof::pass_eof;
use crate::error::{ForwardError, PumpError, Side};
use crate::fd::Connection;
pub use crate::tally::Tally;

/// Per-direction buffer: large enough that a bulk transfer on loopback moves
/// in few syscalls, small enough that 10,000 busy connections stay under
/// 700 MiB. Idle connections hold none.
pub const BUFFER_SIZE: usize = 32 * 1024;

/// Buffers kept per thread for reuse; bounds what an idle period retains.
const POOLED_BUFFERS_PER_THREAD: usize = 64;

/// Quiet checks in a row, each a quarter of the idle timeout apart, that
/// make a connection idle.
const IDLE_CHECKS: u32 = 4;

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
    /// Both sides sent EOF and every byte was delivered; `closed_first`
    /// is the side whose EOF came first.
    Finished { closed_first: Side },
    /// No byte moved for the idle timeout.
    IdleTimeout,
}

/// How the first exchange of a connection with replay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstReply {
    /// The backend's first bytes are with the client, or a replay is no
    /// longer possible (the client sent EOF or a whole buffer): forward the
    /// rest with [`forward`].
    Forward,
    /// The backend closed or reset the connection before answering, after
    /// the client sent the bytes kept in [`SentBytes`].
    Unanswered,
    /// The backend held the client's bytes for the reply timeout without
    /// answering (cut off, or hung): they can go to another backend.
    Silent,
    /// No byte moved for the idle timeout.
    IdleTimeout,
}

/// What a client sent before the first answer, kept for a replay.
pub struct SentBytes {
    buffer: PooledBuffer,
    len: usize,
}

impl SentBytes {
    pub fn new() -> Self {
        Self {
            buffer: PooledBuffer::take(),
            len: 0,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buffer.0[..self.len]
    }
}

impl Default for SentBytes {
    fn default() -> Self {
        Self::new()
    }
}

/// The deadlines of a first exchange.
#[derive(Debug, Clone, Copy)]
pub struct FirstReplyTimeouts {
    pub idle: Duration,
    /// How long the backend may hold client bytes unanswered; `None`: until
    /// the idle timeout.
    pub reply: Option<Duration>,
}

/// Forwards client bytes to `backend`, keeping them in `sent`, until the
/// backend answers or closes (see the module doc). The reply clock starts
/// when the backend has client bytes: at once for a replay (`sent` is not
/// empty), else at the client's first bytes.
pub async fn first_reply(
    client: &Connection,
    backend: &Connection,
    sent: &mut SentBytes,
    timeouts: FirstReplyTimeouts,
    bytes_in: Tally<'_>,
    bytes_out: Tally<'_>,
) -> Result<FirstReply, ForwardError> {
    let progress = AtomicU64::new(0);
    let reply_by = |from: tokio::time::Instant| timeouts.reply.map(|reply| from + reply);
    let mut deadline = if sent.len > 0 {
        reply_by(tokio::time::Instant::now())
    } else {
        None
    };
    let exchange = async {
        loop {
            tokio::select! {
                biased;
                ready = backend.readable() => {
                    let mut ready = ready.map_err(|e| ForwardError::new(Side::Backend, e))?;
                    let mut reply = PooledBuffer::take();
                    let read = ready.try_io(|stream| {
                        let mut stream = stream.get_ref();
                        stream.read(&mut reply.0)
                    });
                    match read {
                        Ok(Ok(n)) if n > 0 => {
                            progress.fetch_add(1, Ordering::Relaxed);
                            write_all(client, &reply.0[..n], &progress, Next::Data)
                                .await
                                .map_err(|e| ForwardError::new(Side::Client, e))?;
                            bytes_out.add(n);
                            return Ok(FirstReply::Forward);
                        }
                        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        // Closed or reset before a byte of answer: gone,
                        // unless the client said nothing or has finished
                        // (then the close is the backend's answer).
                        Ok(_) if sent.len > 0 && !client_finished(client) => {
                            return Ok(FirstReply::Unanswered);
                        }
                        Ok(Ok(_)) => return Ok(FirstReply::Forward),
                        Ok(Err(e)) => return Err(ForwardError::new(Side::Backend, e)),
                        Err(_would_block) => {}
                    }
                }
                ready = client.readable() => {
                    let mut ready = ready.map_err(|e| ForwardError::new(Side::Client, e))?;
                    let start = sent.len;
                    let read = ready.try_io(|stream| {
                        let mut stream = stream.get_ref();
                        stream.read(&mut sent.buffer.0[start..])
                    });
                    match read {
                        // The client is done: the pumps pass the EOF on.
                        Ok(Ok(0)) => return Ok(FirstReply::Forward),
                        Ok(Ok(n)) => {
                            sent.len += n;
                            progress.fetch_add(1, Ordering::Relaxed);
                            if write_all(
                                backend,
                                &sent.buffer.0[start..sent.len],
                                &progress,
                                Next::Data,
                            )
                            .await
                                .is_err()
                            {
                                return Ok(FirstReply::Unanswered);
                            }
                            bytes_in.add(n);
                            if sent.len == sent.buffer.0.len() {
                                return Ok(FirstReply::Forward);
                            }
                            if deadline.is_none() {
                                deadline = reply_by(tokio::time::Instant::now());
                            }
                        }
                        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Ok(Err(e)) => return Err(ForwardError::new(Side::Client, e)),
                        Err(_would_block) => {}
                    }
                }
                () = sleep_until_some(deadline) => return Ok(FirstReply::Silent),
            }
        }
    };
    tokio::select! {
        result = exchange => result,
        () = idle(&progress, timeouts.idle) => Ok(FirstReply::IdleTimeout),
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Whether the client has sent its EOF; peeks, so nothing is consumed.
fn client_finished(client: &Connection) -> bool {
    matches!(client.get_ref().peek(&mut [0u8; 1]), Ok(0))
}

/// Forwards until both directions are done, an error occurs (which says
/// the side at fault), or the connection is idle for `idle_timeout`.
pub async fn forward(
    client: &Connection,
    backend: &Connection,
    idle_timeout: Duration,
    bytes_in: Tally<'_>,
    bytes_out: Tally<'_>,
) -> Result<Outcome, ForwardError> {
    let progress = AtomicU64::new(0);
    let one_eof_passed = AtomicBool::new(false);
    // Whose EOF came first: set by the pump that ends first.
    let backend_first = AtomicBool::new(false);
    let client_done = AtomicBool::new(false);
    let both = async {
        tokio::try_join!(
            async {
                pump(client, backend, bytes_in, &progress, &one_eof_passed)
                    .await
                    .map_err(|e| ForwardError::from_pump(Side::Client, e))?;
                client_done.store(true, Ordering::Relaxed);
                Ok::<(), ForwardError>(())
            },
            async {
                pump(backend, client, bytes_out, &progress, &one_eof_passed)
                    .await
                    .map_err(|e| ForwardError::from_pump(Side::Backend, e))?;
                if !client_done.load(Ordering::Relaxed) {
                    backend_first.store(true, Ordering::Relaxed);
                }
                Ok(())
            },
        )
    };
    tokio::select! {
        result = both => result.map(|_| Outcome::Finished {
            closed_first: if backend_first.load(Ordering::Relaxed) {
                Side::Backend
            } else {
                Side::Client
            },
        }),
        () = idle(&progress, idle_timeout) => Ok(Outcome::IdleTimeout),
    }
}

async fn pump(
    src: &Connection,
    dst: &Connection,
    counter: Tally<'_>,
    progress: &AtomicU64,
    one_eof_passed: &AtomicBool,
) -> Result<(), PumpError> {
    let mut buffer: Option<PooledBuffer> = None;
    loop {
        let mut ready = src.readable().await.map_err(PumpError::Read)?;
        let buf = &mut buffer.get_or_insert_with(PooledBuffer::take).0;
        let read = ready.try_io(|stream| {
            let mut stream = stream.get_ref();
            stream.read(buf)
        });
        let n = match read {
            Ok(Ok(0)) => {
                pass_eof(dst, one_eof_passed);
                return Ok(());
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(PumpError::Read(e)),
            Err(_would_block) => {
                buffer = None;
                continue;
            }
        };
        // An error the confirming read below hit after these bytes.
        let mut error_after = None;
        let (n, next) = if n < buf.len() && ready.ready().is_read_closed() {
            // The peer's FIN has arrived and the read stopped short: one
            // more read tells whether these bytes are the last (it returns
            // 0) before they are written. (A short read is not proof: a
            // read also stops at an urgent mark, and a reset's error comes
            // only after the bytes ahead of it.)
            let more = ready.try_io(|stream| {
                let mut stream = stream.get_ref();
                stream.read(&mut buf[n..])
            });
            match more {
                Ok(Ok(0)) => (n, Next::Eof),
                Ok(Ok(more)) => (n + more, Next::Data),
                Ok(Err(error)) if error.kind() != io::ErrorKind::Interrupted => {
                    error_after = Some(error);
                    (n, Next::Data)
                }
                // Interrupted, or nothing more yet: the loop's next read
                // finds out.
                Ok(Err(_)) | Err(_) => (n, Next::Data),
            }
        } else {
            (n, Next::Data)
        };
        let drained = n < buf.len();
        if drained {
            ready.clear_ready();
        }
        drop(ready);
        progress.fetch_add(1, Ordering::Relaxed);
        write_all(dst, &buf[..n], progress, next)
            .await
            .map_err(PumpError::Write)?;
        counter.add(n);
        if let Some(error) = error_after {
            return Err(PumpError::Read(error));
        }
        if next == Next::Eof {
            pass_eof(dst, one_eof_passed);
            return Ok(());
        }
        if drained {
            buffer = None;
            continue;
        }
        #[cfg(target_os = "linux")]
        if crate::splice::enabled() {
            // A full buffer means a bulk flow: move it kernel-side from now on.
            buffer = None;
            if let Some(pipe) = crate::splice::Pipe::take() {
                return crate::splice::pump(src, dst, pipe, counter, progress, one_eof_passed)
                    .await;
            }
        }
    }
}

/// What a pump does right after a write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Waits for more data.
    Data,
    /// Passes the source's EOF on. On Linux the write is sent with
    /// `MSG_MORE`, so the kernel holds its last partial segment for the FIN
    /// that follows at once (a `shutdown`, or the close for a second EOF):
    /// data and FIN travel in one segment, and the peer acknowledges both
    /// with one ACK.
    Eof,
}

/// Writes all of `data` to `dst`, waiting for writability as needed. Each
/// write that makes progress counts, so a slow but moving receiver is not
/// mistaken for an idle one.
async fn write_all(
    dst: &Connection,
    mut data: &[u8],
    progress: &AtomicU64,
    next: Next,
) -> io::Result<()> {
    let flags = send_flags(next);
    while !data.is_empty() {
        let mut ready = dst.writable().await?;
        let written = ready.try_io(|stream| Ok(send(stream.get_ref(), data, flags)?));
        match written {
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => {
                if n < data.len() {
                    // The send buffer is full: wait for the next event.
                    ready.clear_ready();
                }
                data = &data[n..];
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// Flags for a `send` that `next` follows.
#[cfg(target_os = "linux")]
fn send_flags(next: Next) -> SendFlags {
    match next {
        Next::Data => SendFlags::NOSIGNAL,
        Next::Eof => SendFlags::NOSIGNAL | SendFlags::MORE,
    }
}

/// `MSG_MORE` is Linux's: elsewhere the FIN follows in a segment of its own
/// (and SIGPIPE stays ignored, as Rust's runtime sets it up).
#[cfg(not(target_os = "linux"))]
fn send_flags(_next: Next) -> SendFlags {
    SendFlags::empty()
}

/// Writes a whole small message (a PROXY header, a replay) before
/// forwarding starts.
pub async fn write_prelude(dst: &Connection, data: &[u8]) -> io::Result<()> {
    write_all(dst, data, &AtomicU64::new(0), Next::Data).await
}

/// Resolves once `progress` has not moved for `IDLE_CHECKS` checks in a row,
/// a quarter of `timeout` apart.
async fn idle(progress: &AtomicU64, timeout: Duration) {
    let step = (timeout / IDLE_CHECKS).max(Duration::from_millis(1));
    let mut last = progress.load(Ordering::Relaxed);
    let mut quiet = 0;
    loop {
        tokio::time::sleep(step).await;
        let now = progress.load(Ordering::Relaxed);
        if now == last {
            quiet += 1;
            if quiet >= IDLE_CHECKS {
                return;
            }
        } else {
            last = now;
            quiet = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::Counter;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};

    /// A registered connection and its peer's end, on loopback.
    fn connected_pair() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("non-blocking");
        let ours = crate::fd::register_connection(ours).expect("register");
        (ours, peer)
    }

    /// Segments `socket` has received so far (`tcpi_segs_in` of TCP_INFO).
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn segments_received(socket: &TcpStream) -> u32 {
        use std::os::fd::AsRawFd;
        let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: the descriptor is open for the whole call, and the kernel
        // writes at most `len` bytes, the size of `info`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
        // SAFETY: zeroed is a valid tcp_info, and the kernel filled in the rest.
        unsafe { info.assume_init() }.tcpi_segs_in
    }

    /// Pumps `reply` and its peer's FIN, both arrived before the pump
    /// starts, as the first or the second EOF of a connection (for the
    /// second, the destination is closed right after, as the connection
    /// does). Returns what the destination's peer read up to the FIN, the
    /// segments that brought it, and the bytes the pump counted.
    #[cfg(target_os = "linux")]
    async fn pump_reply_and_fin(second_eof: bool) -> (Vec<u8>, u32, u64) {
        let (src, mut src_peer) = connected_pair();
        let (dst, mut dst_peer) = connected_pair();
        src_peer.write_all(b"reply").expect("peer sends");
        src_peer.shutdown(Shutdown::Write).expect("peer sends FIN");
        wait_read_closed(&src).await;
        let before = segments_received(&dst_peer);

        let counter = Counter::default();
        let total = AtomicU64::new(0);
        let tally = Tally {
            metric: &counter,
            total: &total,
        };
        let (progress, one_eof_passed) = (AtomicU64::new(0), AtomicBool::new(second_eof));
        pump(&src, &dst, tally, &progress, &one_eof_passed)
            .await
            .expect("pump");
        assert_eq!(total.load(Ordering::Relaxed), counter.get());
        if second_eof {
            drop(dst);
        }

        let mut received = Vec::new();
        dst_peer
            .read_to_end(&mut received)
            .expect("data, then a FIN rather than a reset");
        (
            received,
            segments_received(&dst_peer) - before,
            counter.get(),
        )
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bytes_read_together_with_the_eof_leave_in_one_segment_with_the_fin() {
        let (received, segments, counted) = pump_reply_and_fin(false).await;
        assert_eq!(received, b"reply");
        assert_eq!(counted, 5);
        assert_eq!(segments, 1, "the FIN rides on the data segment");
    }

    /// Waits until `src` has seen its peer's FIN or reset.
    async fn wait_read_closed(src: &Connection) {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut ready = src.readable().await.expect("readable");
                if ready.ready().is_read_closed() {
                    break;
                }
                ready.clear_ready();
            }
        })
        .await
        .expect("the FIN or reset arrives");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn on_the_second_eof_the_held_bytes_leave_with_the_close() {
        let (received, segments, counted) = pump_reply_and_fin(true).await;
        assert_eq!(received, b"reply");
        assert_eq!(counted, 5);
        assert_eq!(segments, 1, "the close's FIN rides on the data segment");
    }

    #[tokio::test]
    async fn a_reset_after_data_passes_the_data_on_and_ends_in_the_error() {
        let (src, mut src_peer) = connected_pair();
        let (dst, mut dst_peer) = connected_pair();
        src_peer.write_all(b"partial").expect("peer sends");
        socket2::SockRef::from(&src_peer)
            .set_linger(Some(Duration::ZERO))
            .expect("linger 0");
        drop(src_peer); // a reset, not a FIN
        wait_read_closed(&src).await;

        let counter = Counter::default();
        let total = AtomicU64::new(0);
        let tally = Tally {
            metric: &counter,
            total: &total,
        };
        let (progress, one_eof_passed) = (AtomicU64::new(0), AtomicBool::new(false));
        let error = pump(&src, &dst, tally, &progress, &one_eof_passed)
            .await
            .expect_err("the reset is an error, not an EOF");
        let PumpError::Read(error) = error else {
            panic!("the reset is the source's (read) error: {error:?}");
        };
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(counter.get(), 7);
        assert!(!one_eof_passed.load(Ordering::Relaxed), "no FIN passed on");
        dst_peer.set_nonblocking(true).expect("non-blocking");
        let mut buf = [0u8; 16];
        assert_eq!(dst_peer.read(&mut buf).expect("the bytes arrived"), 7);
        assert_eq!(&buf[..7], b"partial");
        let pending = dst_peer.read(&mut buf).expect_err("no FIN yet");
        assert_eq!(pending.kind(), io::ErrorKind::WouldBlock);
    }

    #[tokio::test]
    async fn the_first_eof_half_closes_and_the_second_is_left_to_the_close() {
        let (first, mut first_peer) = connected_pair();
        let (second, mut second_peer) = connected_pair();
        let one_eof_passed = AtomicBool::new(false);
        let mut buf = [0u8; 8];

        pass_eof(&first, &one_eof_passed);
        assert_eq!(first_peer.read(&mut buf).expect("read"), 0, "FIN sent");
        // The half-closed connection still carries the other direction.
        first_peer.write_all(b"more").expect("peer sends");
        first.readable().await.expect("readable").retain_ready();
        assert_eq!(first.get_ref().read(&mut buf).expect("read"), 4);

        pass_eof(&second, &one_eof_passed);
        second_peer.set_nonblocking(true).expect("non-blocking");
        let pending = second_peer
            .read(&mut buf)
            .expect_err("no FIN before the close");
        assert_eq!(pending.kind(), io::ErrorKind::WouldBlock);
        drop(second);
        second_peer.set_nonblocking(false).expect("blocking");
        assert_eq!(
            second_peer.read(&mut buf).expect("a FIN, not a reset"),
            0,
            "the close sends the FIN"
        );
    }
}
