//! What the `/v1` routes answer.
//!
//! Field names and enum spellings are the wire format that lbctl, tests and
//! users parse; a change here is a change of the API. Reads answer the
//! richer views ([`Node`], [`ServiceStatus`], [`Task`]); writes answer what
//! the registry stored ([`Member`], [`Service`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_config::ServiceSpec;
use serde::{Deserialize, Serialize};

/// A node's id: a random positive 63-bit number, written as a decimal
/// string (`"5212367038917371803"`) in every answer and request, because
/// readers that hold JSON numbers as float64 (jq before 1.7, JavaScript,
/// Prometheus) round ids above 2^53 into other ids. Reading also takes a
/// JSON number, as older lbd versions wrote one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl From<u64> for NodeId {
    fn from(id: u64) -> Self {
        Self(id)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;

    /// Decimal digits only: no sign, no spaces.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{text:?} is not a node id (decimal digits)"));
        }
        text.parse()
            .map(Self)
            .map_err(|_| format!("{text:?} is out of range for a node id"))
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NodeId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id: a decimal string, or a non-negative integer")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<NodeId, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, id: u64) -> Result<NodeId, E> {
                Ok(NodeId(id))
            }

            fn visit_i64<E: serde::de::Error>(self, id: i64) -> Result<NodeId, E> {
                u64::try_from(id)
                    .map(NodeId)
                    .map_err(|_| E::custom(format!("{id} is not a node id (negative)")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
/// A moment, held as milliseconds since the Unix epoch and written as an
/// RFC 3339 UTC time with milliseconds (`"2026-12-01T15:54:00.123Z"`).
/// Reading also takes a JSON number of milliseconds, as lbd versions before
/// RFC 3339 wrote one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl From<u64> for Timestamp {
    fn from(millis: u64) -> Self {
        Self(millis)
    }
}

impl Timestamp {
    /// The moment as a `SystemTime`.
    pub fn system_time(self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.system_time())
        )
    }
}

impl std::str::FromStr for Timestamp {
    type Err = String;

    /// An RFC 3339 UTC time (`Z`), fractions of a second optional.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let time = humantime::parse_rfc3339(text)
            .map_err(|error| format!("{text:?} is not an RFC 3339 UTC time: {error}"))?;
        let since = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("{text:?} is before 1970"))?;
        u64::try_from(since.as_millis())
            .map(Self)
            .map_err(|_| format!("{text:?} is out of range"))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time, or milliseconds since the Unix epoch")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, millis: u64) -> Result<Timestamp, E> {
                Ok(Timestamp(millis))
            }

            fn visit_i64<E: serde::de::Error>(self, millis: i64) -> Result<Timestamp, E> {
                u64::try_from(millis)
                    .map(Timestamp)
                    .map_err(|_| E::custom(format!("{millis} is before 1970")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Defines a field-less enum whose JSON spelling and `Display` are the
/// given strings, so the two never drift apart.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$variant_meta:meta])* $variant:ident = $text:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$variant_meta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// The spelling on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// Managers vote in Raft (up to five of them); workers only hold a copy.
    Role {
        Manager = "manager",
        Worker = "worker",
    }
}

wire_enum! {
    /// Whether the scheduler may place tasks on a node.
    Availability {
        /// New tasks may be placed here.
        Active = "active",
        /// No new tasks; running ones stay.
        Pause = "pause",
        /// No tasks: running ones move elsewhere.
        Drain = "drain",
    }
}

wire_enum! {
    /// Whether a node's heartbeats arrive.
    NodeStatus {
        Ready = "ready",
        Down = "down",
    }
}

wire_enum! {
    /// A node's place in the Raft membership, as this node sees it.
    RaftRole {
        Leader = "leader",
        Voter = "voter",
        Learner = "learner",
    }
}

wire_enum! {
    /// What the scheduler wants of a task.
    DesiredState {
        Running = "running",
        Shutdown = "shutdown",
    }
}

wire_enum! {
    /// What was last observed of a task.
    TaskState {
        /// No node can take it yet; its `message` says why.
        Pending = "pending",
        /// Placed on a node whose agent has not started it yet.
        Assigned = "assigned",
        Starting = "starting",
        Running = "running",
        /// Ended on its own, turned unhealthy or could not start.
        Failed = "failed",
        /// Stopped because it was asked to.
        Shutdown = "shutdown",
        /// Its node went down or was removed: its fate is unknown.
        Orphaned = "orphaned",
    }
}

wire_enum! {
    /// Result of the service's active check.
    TaskHealth {
        /// Not checked yet, or not enough results to decide.
        Starting = "starting",
        Healthy = "healthy",
        Unhealthy = "unhealthy",
        /// The service has no check: running is enough.
        None = "none",
    }
}

wire_enum! {
    /// State of a service's rolling update.
    UpdateState {
        Updating = "updating",
        Paused = "paused",
        Completed = "completed",
        RollbackStarted = "rollback_started",
        RollbackPaused = "rollback_paused",
        RollbackCompleted = "rollback_completed",
    }
}

/// `GET /v1/cluster`: the cluster as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    /// The node that answered.
    pub node_id: NodeId,
    /// `null` while no leader is known.
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Index of the last log entry this node holds.
    pub commit_index: u64,
    /// Index of the last entry this node applied.
    pub applied_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// How many nodes and services the registry holds.
    pub nodes: usize,
    pub services: usize,
}

/// `GET /v1/cluster/join-token/{role}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub token: String,
}

/// A joiner's first certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateAnswer {
    /// PEM.
    pub certificate: String,
    /// The cluster CA's certificate, PEM (its digest is the token's).
    pub ca_certificate: String,
}

/// A renewed certificate, with the CA key when the node is a manager.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewAnswer {
    pub certificate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
}

impl std::fmt::Debug for RenewAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewAnswer")
            .field("certificate", &self.certificate)
            .field("ca_key", &self.ca_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A member of the cluster as the registry holds it: what a joining node
/// presents, and what a join or a node update answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    /// Where its Raft RPC server listens.
    pub raft_addr: SocketAddr,
    /// Where its admin API listens.
    pub api_addr: SocketAddr,
    /// Where it binds published ports; its tasks are reached here too.
    pub ingress_addr: IpAddr,
    pub role: Role,
    pub availability: Availability,
    pub status: NodeStatus,
    pub labels: BTreeMap<String, String>,
}

/// A node as `GET /v1/nodes` shows it: the member and its Raft role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(flatten)]
    pub member: Member,
    pub raft: RaftRole,
}

/// A service as the registry holds it: what a write answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// 12 hex digits, made when the service was created; empty for one
    /// created by an lbd before service ids.
    #[serde(default)]
    pub id: String,
    /// The spec as submitted; it passed validation when it was stored.
    pub spec: ServiceSpec,
    /// Starts at 1 and grows by one with every accepted spec change.
    pub version: u64,
    pub vip: Ipv4Addr,
    /// The IPv6 VIP; absent in a cluster without a v6 VIP range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_v6: Option<Ipv6Addr>,
    /// The spec before the last update, for `service rollback`.
    pub previous: Option<ServiceSpec>,
    /// Version of the task template; tasks of an older one are replaced by a
    /// rolling update.
    #[serde(default)]
    pub task_version: u64,
    /// The task version that goes with `previous`.
    #[serde(default)]
    pub previous_task_version: u64,
    /// The last rolling update, if any.
    #[serde(default)]
    pub update: Option<UpdateStatus>,
}

/// A service with its task counts, as reads show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    #[serde(flatten)]
    pub service: Service,
    /// Tasks that serve traffic now.
    pub running: usize,
    /// Tasks wanted: the replicas, or the live tasks of a global service.
    pub desired: usize,
    /// Listen addresses of the service that some node cannot bind now (it
    /// serves the rest and retries these every few seconds).
    #[serde(default)]
    pub listener_errors: Vec<ListenerError>,
}

/// A listen address a node cannot bind, as that node reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerError {
    /// The node's name.
    pub node: String,
    pub address: SocketAddr,
    /// `udp` for a UDP port; absent for TCP (and from older lbd).
    #[serde(default, skip_serializing_if = "is_tcp")]
    pub protocol: lb_config::Protocol,
    /// The bind error in words (`address in use`).
    pub error: String,
}

fn is_tcp(protocol: &lb_config::Protocol) -> bool {
    *protocol == lb_config::Protocol::Tcp
}

impl fmt::Display for ListenerError {
    /// `node-2: cannot bind 127.0.0.2:8080: address in use` (a UDP port's
    /// address as `127.0.0.2:53/udp`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.protocol {
            lb_config::Protocol::Tcp => "",
            lb_config::Protocol::Udp => "/udp",
        };
        write!(
            f,
            "{}: cannot bind {}{protocol}: {}",
            self.node, self.address, self.error
        )
    }
}

/// A service's rolling update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    /// The task template version being rolled out.
    pub task_version: u64,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub message: String,
}

/// A task as `GET .../tasks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service: String,
    /// Replicated services number their tasks 1..=replicas; a global
    /// service's tasks have slot 0 and are known by their node.
    pub slot: u32,
    /// The service's task template version this task runs.
    pub spec_version: u64,
    /// `None` while pending.
    pub node: Option<NodeId>,
    pub desired: DesiredState,
    pub state: TaskState,
    pub health: TaskHealth,
    pub endpoint: Option<TaskEndpoint>,
    /// Container id or `pid:N`.
    pub runtime_id: Option<String>,
    /// The last error, or why the task is pending or stopped.
    pub message: String,
    /// Replacements of this slot after failures, before this task.
    pub attempt: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When it was first observed running.
    pub started_at: Option<Timestamp>,
    /// The name of its node, if it has one.
    pub node_name: Option<String>,
}

/// Where a task is reached: its node's address and one host port per target
/// port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEndpoint {
    pub ip: IpAddr,
    /// `(target port, host port)` pairs.
    pub ports: Vec<(u16, u16)>,
}

/// `GET /v1/tasks/{id}/logs`: a task's output as its runtime keeps it
/// (a container's stdout and stderr, a process task's log file), read on
/// the node that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLogs {
    pub task: String,
    /// The output, lossily decoded as UTF-8; with `?tail=N` its last N
    /// lines.
    pub logs: String,
}

/// What a `DELETE` answers: the name of what is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd and above 2^53: a float64 reader turns it into another id.
    const BIG: u64 = (1 << 62) + 1;

    #[test]
    fn node_ids_are_decimal_strings_and_numbers_are_still_read() {
        let id = NodeId(BIG);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{BIG}\""));
        assert_ne!(BIG as f64 as u64, BIG, "the id must be one float64 rounds");
        let read: NodeId = serde_json::from_str(&format!("\"{BIG}\"")).unwrap();
        assert_eq!(read, id);
        let old: NodeId = serde_json::from_str(&BIG.to_string()).unwrap();
        assert_eq!(old, id, "a number from an older lbd");
        for bad in [
            "\"\"",
            "\"-1\"",
            "\"12a\"",
            "\" 1\"",
            "-1",
            "\"99999999999999999999\"",
            "1.5",
        ] {
            let err = serde_json::from_str::<NodeId>(bad)
                .expect_err(bad)
                .to_string();
            assert!(err.contains("node id"), "{bad}: {err}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_and_old_numbers_are_still_read() {
        let at = Timestamp(1_700_000_000_123);
        let text = serde_json::to_string(&at).unwrap();
        assert_eq!(text, "\"2023-11-14T22:13:20.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&text).unwrap(), at);
        let old: Timestamp = serde_json::from_str("1700000000123").unwrap();
        assert_eq!(old, at, "a number from an older lbd");
        let whole: Timestamp = serde_json::from_str("\"2023-11-14T22:13:20Z\"").unwrap();
        assert_eq!(whole, Timestamp(1_700_000_000_000));
        for bad in ["\"yesterday\"", "\"2023-11-14 22:13:20\"", "-1", "1.5"] {
            assert!(serde_json::from_str::<Timestamp>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_id_field_is_a_string_in_the_json() {
        let info = ClusterInfo {
            id: "c".into(),
            node_id: NodeId(BIG),
            leader: Some(NodeId(BIG)),
            term: 1,
            commit_index: 2,
            applied_index: 2,
            voters: vec![NodeId(BIG)],
            learners: vec![NodeId(3)],
            nodes: 1,
            services: 0,
        };
        let json = serde_json::to_value(&info).unwrap();
        let big = serde_json::Value::String(BIG.to_string());
        assert_eq!(json["node_id"], big);
        assert_eq!(json["leader"], big);
        assert_eq!(json["voters"][0], big);
        assert_eq!(json["learners"][0], "3");
        assert_eq!(serde_json::from_value::<ClusterInfo>(json).unwrap(), info);

        let member = Member {
            id: NodeId(BIG),
            name: "n".into(),
            raft_addr: "127.0.0.1:9901".parse().unwrap(), // fixed-port-ok: a value
            api_addr: "127.0.0.1:9900".parse().unwrap(),  // fixed-port-ok: a value
            ingress_addr: "127.0.0.1".parse().unwrap(),
            role: Role::Manager,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: BTreeMap::new(),
        };
        let node = Node {
            member,
            raft: RaftRole::Leader,
        };
        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(json["id"], big);
        assert_eq!(serde_json::from_value::<Node>(json.clone()).unwrap(), node);
        // A flattened member written by an older lbd, with a number.
        let mut old = json;
        old["id"] = serde_json::Value::from(BIG);
        assert_eq!(serde_json::from_value::<Node>(old).unwrap(), node);
    }
}
