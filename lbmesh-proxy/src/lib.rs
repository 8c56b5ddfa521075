//! lbmesh-proxy: lbmesh's data plane, from the services to route to the
//! bytes moving between clients and backends.
//!
//! # Layout and data flow
//!
//! ```text
//! [ServiceRoutes] | [Update] ──Proxy::apply | apply_per_listener──> RoutingTable::build
//!   (rebuilds the changed services only, reuses backend state) ──ArcSwap::store
//!   (discovery)                      └─ listeners: bind new addresses (one that fails is
//!                                       skipped and retried, or refuses the change), stop removed ones
//!
//! accept loop (one per proxy thread and address) ──> connection: load table ─> route
//!   ─> pick (balance) ─> connect (retry, eject) ─> PROXY header ─> forward (copy | splice) ─> close
//! udp::serve (one per proxy thread and UDP address) ──> session per client flow ─> pick
//!   ─> connected socket to the backend ─> datagrams both ways ─> idle expiry
//! ```
//!
//! - [`discovery`]: the one narrow input type, services with their
//!   endpoints (address and weight), and the updates that carry a change. Whoever knows the services (a config
//!   file, the registry) builds these; this crate knows nothing of either.
//! - [`routing`]: the immutable routing table keyed by listen address, and
//!   [`limit`], the resizable per-service connection cap.
//! - [`balance`]: backend sets and the lock-free pickers (round-robin,
//!   random, smooth weighted, least-connections, Maglev).
//! - [`listeners`] binds listening sockets; [`Proxy`] owns the table, the
//!   listeners, their accept loops and the proxy threads ([`workers`]).
//! - `accept` and `connection` take a connection from the listen backlog to
//!   a backend; `connect` opens backend sockets; `forward` (with `splice` on
//!   Linux and `eof` for half-closes) moves the bytes, counted by `tally`; `fd` registers
//!   sockets with the reactor (the crate's one `unsafe`); `tcp` holds the
//!   socket options of both sides; [`proxy_protocol`] writes PROXY headers.
//! - [`udp`] serves UDP ports and VIPs: a session per client flow, its
//!   replies relayed back from the published socket.
//! - [`metrics`] holds the data plane's Prometheus families; [`error`]
//!   says whose fault a failure was (client, backend, this node);
//!   `log_limit` bounds the log lines a failing backend can cause;
//!   [`access_log`] writes a service's closed connections as JSON lines
//!   from a thread of its own, fed by a bounded queue.
//!
//! # Invariants
//!
//! The hot path only `load()`s the table: everything that changes builds a
//! new table off to the side and stores it once. A pick takes no lock and
//! allocates nothing; per-connection metrics are resolved handles, never
//! label look-ups.
#![deny(unsafe_code)]

mod accept;
pub mod access_log;
pub mod balance;
mod connect;
mod connection;
pub mod discovery;
mod eof;
pub mod error;
mod fd;
mod forward;
pub mod limit;
pub mod listeners;
mod log_limit;
pub mod metrics;
mod proxy;
pub mod proxy_protocol;
pub mod routing;
pub mod series;
#[cfg(target_os = "linux")]
mod splice;
mod tally;
mod tcp;
pub mod udp;
pub mod workers;

pub use proxy::{ApplyError, ListenerFailure, Proxy, BIND_RETRY};
