//! lbmesh: the daemon `lbd`, which wires the data plane, the registry, the
//! scheduler and the agent of a Layer-4 routing mesh together.
//!
//! # Layout and data flow
//!
//! ```text
//! config file ─┐                                     ┌─> lbmesh_proxy::Proxy::apply ─> listeners, accept loops
//!              ├─ routes: services → ServiceRoutes ──┤       (pick, connect, forward on the proxy threads)
//! registry ────┘   (daemon: start, reload, stop)     └─> admin (/metrics /live /ready, /v1 api)
//!    │
//!    ├──> scheduler (acts on the leader only): services → tasks on nodes, node liveness,
//!    │        restarts, rolling updates ──> Schedule entries
//!    └──> agent (every node): its tasks → runtime (docker | process), health checks
//!             ──> ReportTask entries; heartbeats to the leader (not through the log)
//! ```
//!
//! - [`daemon`] owns the lifecycle: where services come from (a file in
//!   standalone mode, the registry in cluster mode), the data plane that
//!   serves them, the admin server, and graceful shutdown.
//! - [`routes`] turns services (and their serving tasks) into the data
//!   plane's one input type, [`lbmesh_proxy::discovery::ServiceRoutes`].
//! - [`metrics`] is the daemon's registry: the data plane's families and
//!   the control plane's; [`admin`] serves them with `/live` and `/ready`.
//! - [`files`] keeps the data dir private (0700 dirs, 0600 files);
//!   [`access_log`] says where the services' access log lines go.
//! - [`cluster`] starts (bootstraps, joins, rejoins) the registry; [`api`]
//!   serves its `/v1` routes with the types of `lbmesh-api`, which `lbctl`
//!   (a crate of its own) reads too.
//! - [`scheduler`] plans each round as a pure function of the registry;
//!   [`agent`] runs and reports this node's tasks through its runtimes;
//!   [`listener_report`] writes the listen addresses this node cannot bind
//!   (which it retries) to the registry.
//! - [`vip_route`] makes the registry's VIP ranges (v4 and v6) local on
//!   the node (one AnyIP route each), so containers reach VIPs; [`dns`]
//!   answers service names with their VIPs for containers and host
//!   processes.
//! - [`logging`] sets up `lbd`'s log lines: the default filter, colour,
//!   text or JSON.
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod agent;
pub mod api;
pub mod cluster;
pub mod daemon;
pub mod defaults;
pub mod dns;
pub mod files;
pub mod listener_report;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod routes;
pub mod scheduler;
pub mod tokens;
pub mod vip_route;
