//! lbmesh-api: the registry's `/v1` HTTP/JSON API as types, shared by the
//! daemon's API server and `lbctl`, and one client for it.
//!
//! # Layout
//!
//! - [`answers`]: what the routes answer (cluster, nodes, services, tasks)
//!   and their enums; the API's own types, not the registry's records, so a
//!   change to the registry's storage does not change the wire format.
//! - [`requests`]: the bodies the routes take (a service body is
//!   [`lb_config::ServiceSpec`]).
//! - [`error`]: the error body every route answers with, and the client's
//!   [`ApiError`].
//! - [`client`]: [`Client`], one typed method per route, on hyper's HTTP/1.1
//!   client, one request per connection.
//! - [`token`]: a client's token from `--token`, `--token -` (standard
//!   input) or `--token-file`, and the token formats (`LBMTKN-2-`,
//!   `LBMCTL-2-`, each carrying the cluster CA's digest).
//!
//! # Routes
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/cluster` | | [`ClusterInfo`]: cluster id, this node, leader, term, indexes, voters, learners |
//! | GET | `/v1/cluster/join-token/{manager,worker}` | | [`JoinToken`] `{"token": ...}` (a manager holding the CA key answers; others 503) |
//! | POST | `/v1/cluster/join-token/{manager,worker}/rotate` | | the new [`JoinToken`]; the old one admits no one, joined nodes are unaffected |
//! | POST | `/v1/cluster/join` | [`JoinRequest`] `{"token", "node"}` | the admitted [`Member`] (the join token authenticates; no bearer token); the record and the Raft address (dialable, unique, answering as the node) are checked before the node joins Raft |
//! | POST | `/v1/cluster/certificate` | [`CertificateRequest`] `{"token", "node_id", "csr"}` | [`CertificateAnswer`]: a joiner's first certificate, of its join token's role (the join token authenticates) |
//! | POST | `/v1/cluster/renew` | [`RenewRequest`] `{"csr"}` | [`RenewAnswer`]: a new certificate of the role the registry gives the node its TLS client certificate names, with the CA key for a manager; served by a manager, never forwarded |
//! | GET | `/v1/nodes` | | every [`Node`], with its Raft role |
//! | GET | `/v1/nodes/{name or id}` | | one [`Node`] |
//! | POST | `/v1/nodes/{name or id}` | [`NodeUpdate`] `{"availability", "labels_add", "labels_remove"}` | the updated [`Member`] |
//! | DELETE | `/v1/nodes/{name or id}` | | [`Removed`]; removes a down node (`?force=true` for one that is not down), or by id a Raft member without a node record (`?force=true` if it votes) |
//! | GET | `/v1/nodes/{name or id}/tasks` | | the [`Task`]s assigned to the node |
//! | GET | `/v1/services` | | every [`ServiceStatus`], with running/desired task counts and the [`ListenerError`]s nodes report |
//! | GET | `/v1/services/{name}` | | one [`ServiceStatus`], with its update status and listener errors |
//! | GET | `/v1/services/{name}/tasks` | | its [`Task`]s, live and recent history (`service ps`) |
//! | POST | `/v1/services` | a `[[service]]` spec as JSON | `201` and the [`Service`] |
//! | PUT | `/v1/services/{name}` | the whole new spec | the [`Service`], version + 1 |
//! | POST | `/v1/services/{name}/scale` | [`Scale`] `{"replicas": N}` | the [`Service`] |
//! | POST | `/v1/services/{name}/rollback` | | the [`Service`] on its previous spec |
//! | DELETE | `/v1/services/{name}` | | [`Removed`] `{"removed": name}` |
//! | GET | `/v1/tasks/{id}/logs[?tail=N]` | | [`TaskLogs`]: the task's output, read by the node that runs it (another node passes the request there) |
//! | GET | `/v1/tasks/{id}/logs?follow=true[&tail=N]` | | the output as it grows, `text/plain`, chunked, until the task stops or the client goes (passed on the same way, as a stream) |
//!
//! Path segments in braces are percent-encoded (`a b` is `a%20b`, `a/b` is
//! `a%2Fb`); the server splits on `/` and then decodes each segment. `/v1`
//! is TLS only (plain HTTP gets 426); the client pins the cluster CA.
//! Every route but `join`, `certificate` and `renew` needs
//! `Authorization: Bearer <control token>`, except on the node's local
//! socket. Bodies
//! over 2 MiB, and service specs over 1 MiB once encoded as compact JSON
//! (field `spec`), are refused with 413. Errors are [`ErrorBody`]
//! `{"error": {"field": ..., "reason": ...}}` with 400 (invalid), 401
//! (token), 404 (unknown), 409 (conflict), 413, 503 (no leader). Reads are
//! linearizable. A write that reaches a follower is passed to the leader's
//! API unchanged, with its [`IDEMPOTENCY_KEY`] header (the client's, or
//! one the follower made), the same on every retry: a write whose answer
//! was lost and that is sent again gets its first answer, never a 409 for
//! its own effect, and is applied once. Times (`created_at`, `updated_at`,
//! `started_at`, `completed_at`) are RFC 3339 UTC strings with milliseconds
//! ([`Timestamp`]); before they were milliseconds since the Unix epoch, which
//! are still read.
#![forbid(unsafe_code)]

pub mod answers;
pub mod client;
pub mod error;
pub mod requests;
pub mod token;

pub use answers::{
    Availability, CertificateAnswer, ClusterInfo, DesiredState, JoinToken, ListenerError, Member,
    Node, NodeId, NodeStatus, RaftRole, Removed, RenewAnswer, Role, Service, ServiceStatus, Task,
    TaskEndpoint, TaskHealth, TaskLogs, TaskState, Timestamp, UpdateState, UpdateStatus,
};
pub use client::{Client, Streamed};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use requests::{
    check_idempotency_key, CertificateRequest, JoinRequest, NodeUpdate, RenewRequest, Scale,
    IDEMPOTENCY_KEY,
};
