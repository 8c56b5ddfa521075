//! The per-service access log: one JSON line per closed client
//! connection, written off the hot path.
//!
//! # Flow
//!
//! ```text
//! connection closes (service has access_log on)
//!   ─> Record (addresses, Arc'd service name, byte totals, duration, retries, how it ended:
//!      no allocation) ─> AccessLog::record: try_send into a bounded queue (QUEUE records)
//!        full ─> dropped, counted in lbmesh_access_log_dropped_total; the connection never waits
//!   writer thread, every DRAIN_EVERY ─> empties the queue: one JSON line per record into a
//!                    buffered writer, flushed once ─> stdout or the file lbd was given
//! ```
//!
//! A line:
//!
//! ```text
//! {"time":"2026-12-01T19:20:00.123Z","service":"web","client":"10.0.0.7:51234",
//!  "listen":"10.0.0.1:8080","backend":"10.0.0.2:32768","bytes_in":77,"bytes_out":1024,
//!  "duration_ms":1.250,"retries":0,"end":"client_close"}
//! ```
//!
//! `bytes_in` are the client's bytes delivered to a backend (a replay to a
//! second backend counts once), `bytes_out` the backend's delivered to the
//! client. `end` is `client_close` or `backend_close` (the side whose EOF
//! came first, every byte delivered), `idle_timeout`, `client_error`,
//! `backend_error` (aborted, by the side at fault) or `no_backend`
//! (`backend` is then `null`). `time` is when the connection closed.
//!
//! # Invariants
//!
//! - A connection only fills a fixed-size [`Record`] and offers it to the
//!   queue; formatting, writing and flushing are the writer thread's.
//! - The queue is bounded: a writer that cannot keep up (a slow disk, a
//!   blocked pipe) costs lines, counted, never a connection's latency or
//!   memory without bound.
//! - Lines are only written whole; a write error is counted
//!   (`lbmesh_access_log_write_errors_total`), logged once, and the writer
//!   keeps going.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::{IntCounter, Registry};
use tracing::warn;

use crate::error::{End, Side};

/// How often the writer empties the queue. It sleeps rather than waits on
/// the queue, so a connection's `try_send` never has a sleeping reader to
/// wake (a futex call per close, which cost a third of the connection rate
/// on a 2-core machine when the writer waited in `recv`).
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Records the queue holds before it drops: what 300,000 closes a second
/// bring in one `DRAIN_EVERY`, about 2 MiB.
pub const QUEUE: usize = 16_384;

/// Buffer of the writer: many lines per `write` when closes come in bursts.
const WRITE_BUFFER: usize = 64 * 1024;

/// How a connection ended, as its line's `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    ClientClose,
    BackendClose,
    IdleTimeout,
    ClientError,
    BackendError,
    NoBackend,
}

impl Ended {
    /// A connection's end, with the side whose EOF came first when both
    /// closed.
    pub fn of(end: End, closed_first: Side) -> Self {
        match (end, closed_first) {
            (End::Finished, Side::Client) => Self::ClientClose,
            (End::Finished, Side::Backend) => Self::BackendClose,
            (End::IdleTimeout, _) => Self::IdleTimeout,
            (End::ClientError, _) => Self::ClientError,
            (End::BackendError, _) => Self::BackendError,
            (End::NoBackend, _) => Self::NoBackend,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClose => "client_close",
            Self::BackendClose => "backend_close",
            Self::IdleTimeout => "idle_timeout",
            Self::ClientError => "client_error",
            Self::BackendError => "backend_error",
            Self::NoBackend => "no_backend",
        }
    }
}

/// One closed connection.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it closed.
    pub at: SystemTime,
    pub service: Arc<str>,
    pub client: SocketAddr,
    /// The listen address (published port or VIP) it came in on.
    pub listen: SocketAddr,
    /// The backend it was forwarded to last; `None` without one.
    pub backend: Option<SocketAddr>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    /// Backends tried after the first.
    pub retries: u32,
    pub end: Ended,
}

/// The sending half, shared by every proxy thread: cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    queue: SyncSender<Record>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread on `out` and registers the log's metrics
    /// on `registry`. The thread ends, flushing, once every clone of the
    /// returned handle is dropped.
    pub fn start(
        out: Box<dyn Write + Send>,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let lines = counter("lbmesh_access_log_lines_total", "Access log lines written.")?;
        let dropped = counter(
            "lbmesh_access_log_dropped_total",
            "Access log records dropped because the writer's queue was full.",
        )?;
        let errors = counter(
            "lbmesh_access_log_write_errors_total",
            "Access log writes that failed (the lines are lost).",
        )?;
        let (queue, records) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("lbmesh-access-log".to_owned())
            .spawn(move || write_records(&records, out, &lines, &errors))
            .map_err(|e| prometheus::Error::Msg(format!("access log thread: {e}")))?;
        Ok(Self { queue, dropped })
    }

    /// Offers `record` to the writer; drops it (counted) when the queue is
    /// full. Never blocks.
    pub fn record(&self, record: Record) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.inc(),
            // The writer is gone (it only ends with the senders): nothing
            // to write to.
            Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// The writer thread: lines until the senders are gone, a flush whenever
/// the queue runs empty.
fn write_records(
    records: &Receiver<Record>,
    out: Box<dyn Write + Send>,
    lines: &IntCounter,
    errors: &IntCounter,
) {
    let mut out = io::BufWriter::with_capacity(WRITE_BUFFER, out);
    let mut line = String::with_capacity(256);
    let mut warned = false;
    let mut failed = |error: io::Error, errors: &IntCounter| {
        errors.inc();
        if !warned {
            warn!(%error, "cannot write the access log; lines are lost (counted in lbmesh_access_log_write_errors_total)");
            warned = true;
        }
    };
    loop {
        let mut wrote = false;
        let gone = loop {
            match records.try_recv() {
                Ok(record) => {
                    line.clear();
                    format_line(&record, &mut line);
                    match out.write_all(line.as_bytes()) {
                        Ok(()) => lines.inc(),
                        Err(error) => failed(error, errors),
                    }
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote {
            if let Err(error) = out.flush() {
                failed(error, errors);
            }
        }
        if gone {
            return;
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// `record` as one JSON line, with its newline.
fn format_line(record: &Record, line: &mut String) {
    // Writing into a String cannot fail.
    let _ = write!(
        line,
        "{{\"time\":\"{}\",\"service\":",
        humantime::format_rfc3339_millis(record.at)
    );
    json_string(&record.service, line);
    let _ = write!(
        line,
        ",\"client\":\"{}\",\"listen\":\"{}\",\"backend\":",
        record.client, record.listen
    );
    match record.backend {
        Some(backend) => {
            let _ = write!(line, "\"{backend}\"");
        }
        None => line.push_str("null"),
    }
    let _ = writeln!(
        line,
        ",\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"retries\":{},\"end\":\"{}\"}}",
        record.bytes_in,
        record.bytes_out,
        record.duration.as_secs_f64() * 1000.0,
        record.retries,
        record.end.as_str()
    );
}

/// `text` as a JSON string (service names are plain, but a line must stay
/// JSON whatever a name holds).
fn json_string(text: &str, line: &mut String) {
    line.push('"');
    for c in text.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(line, "\\u{:04x}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn record(n: u64) -> Record {
        Record {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            service: Arc::from("web"),
            client: "127.0.0.1:50000".parse().expect("addr"),
            listen: "127.0.0.1:8080".parse().expect("addr"), // fixed-port-ok: text only
            backend: Some("127.0.0.2:9000".parse().expect("addr")), // fixed-port-ok: text only
            bytes_in: n,
            bytes_out: 2 * n,
            duration: Duration::from_micros(1_250),
            retries: 1,
            end: Ended::BackendClose,
        }
    }

    #[test]
    fn a_line_is_one_json_object() {
        let mut line = String::new();
        format_line(&record(7), &mut line);
        assert_eq!(
            line,
            "{\"time\":\"2023-11-14T22:13:20.123Z\",\"service\":\"web\",\
             \"client\":\"127.0.0.1:50000\",\"listen\":\"127.0.0.1:8080\",\
             \"backend\":\"127.0.0.2:9000\",\"bytes_in\":7,\"bytes_out\":14,\
             \"duration_ms\":1.250,\"retries\":1,\"end\":\"backend_close\"}\n"
        );
        let mut none = record(0);
        none.backend = None;
        none.end = Ended::NoBackend;
        none.service = Arc::from("we\"b\n");
        line.clear();
        format_line(&none, &mut line);
        assert!(line.contains("\"service\":\"we\\\"b\\u000a\""), "{line}");
        assert!(line.contains("\"backend\":null,"), "{line}");
    }

    #[test]
    fn every_record_becomes_a_line_in_order() {
        let registry = Registry::new();
        let out = Shared::default();
        let log = AccessLog::start(Box::new(out.clone()), &registry).expect("start");
        for n in 0..1_000 {
            log.record(record(n));
        }
        drop(log);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
            if text.lines().count() == 1_000 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let ins: Vec<u64> = text
            .lines()
            .map(|l| {
                let rest = &l[l.find("\"bytes_in\":").expect("bytes_in") + 11..];
                rest[..rest.find(',').expect("comma")]
                    .parse()
                    .expect("number")
            })
            .collect();
        assert_eq!(ins, (0..1_000).collect::<Vec<u64>>());
    }

    /// A writer that blocks: the queue fills, further records are dropped
    /// and counted, and `record` returns at once.
    #[test]
    fn a_stuck_writer_costs_counted_lines_not_waits() {
        struct Stuck(Arc<(Mutex<bool>, std::sync::Condvar)>);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let (lock, released) = &*self.0;
                let mut go = lock.lock().expect("lock");
                while !*go {
                    go = released.wait(go).expect("wait");
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let registry = Registry::new();
        // A tiny buffer would not make the writer block sooner: BufWriter
        // writes through on its first full buffer; enough records make it.
        let log = AccessLog::start(Box::new(Stuck(Arc::clone(&gate))), &registry).expect("start");
        let extra = 5_000;
        let offered = QUEUE + WRITE_BUFFER / 100 + extra;
        for n in 0..offered {
            log.record(record(n as u64));
        }
        let dropped = log.dropped.get();
        assert!(
            dropped >= extra as u64 && dropped < offered as u64,
            "dropped {dropped} of {offered}"
        );
        let (lock, released) = &*gate;
        *lock.lock().expect("lock") = true;
        released.notify_all();
    }
}
