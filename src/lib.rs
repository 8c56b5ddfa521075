//! lbmesh: a Layer-4 load balancer and routing mesh for container clusters.
//!
//! # Layout and data flow
//!
//! ```text
//! config file ─> lb_config::Config ─> routing::RoutingTable ──ArcSwap──> proxy accept loops
//!                  (daemon: start, SIGHUP reload, SIGTERM stop)            │ pick (balance)
//!                                                                          ▼
//!                              admin (/metrics /live /ready) <─ metrics <─ connections ─> backends
//! ```
//!
//! - [`daemon`] owns the lifecycle: it builds a [`routing::RoutingTable`] from
//!   the checked config, binds listeners, swaps the table on reload and drives
//!   graceful shutdown.
//! - [`routing`] turns services into immutable routes keyed by listen address
//!   and carries long-lived backend and service state across snapshots.
//! - [`balance`] holds the backend set and the lock-free pickers.
//! - [`proxy`] accepts, connects with retry and passive ejection, writes the
//!   PROXY header, resends a request a backend closed unanswered (when the
//!   service asks for it) and forwards bytes, on one thread per core
//!   ([`proxy::workers`]); the control plane has a runtime of its own.
//! - [`metrics`] and [`admin`] expose what happens.
//!
//! In cluster mode the services come from the registry instead of a file
//! ([`cluster`], [`api`]; operators drive it with `lbctl`, a crate of its own
//! over `lbmesh-api`), and two control loops run on every node:
//!
//! ```text
//! registry ──> scheduler (acts on the leader only): services → tasks on nodes, node liveness,
//!                  restarts, rolling updates ──> Schedule entries
//!          ──> agent (every node): its tasks → runtime (docker | process), health checks
//!                  ──> ReportTask entries; heartbeats to the leader (not through the log)
//!          ──> routing: running, healthy tasks of every node become backends
//! ```
//!
//! - [`scheduler`] plans each round as a pure function of the registry.
//! - [`agent`] runs and reports this node's tasks through its runtimes.
//!
//! The hot path only `load()`s the table; everything that changes builds a new
//! table off to the side and stores it once.
#![deny(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod api;
pub mod balance;
pub mod cluster;
pub mod daemon;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod scheduler;
