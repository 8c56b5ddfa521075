//! The registry's storage: openraft's log store and state machine on redb.
//!
//! # Layout
//!
//! One redb file per node, shared by both halves (a redb file can be opened
//! once per process):
//!
//! | table | key | value |
//! |---|---|---|
//! | `raft_log` | index (u64) | JSON of the entry |
//! | `raft_meta` | `vote`, `committed`, `last_purged` | JSON |
//! | `state_machine` | `snapshot` (state, last applied log id, membership) | JSON |
//!
//! # Invariants
//!
//! - Every write transaction commits with `Durability::Immediate` (fsync)
//!   before the call returns; `append` tells openraft the entries are flushed
//!   only after that commit.
//! - redb is blocking, so every call runs in `spawn_blocking`, off the async
//!   worker threads.
//! - `apply` writes nothing: the applied state lives in memory and is
//!   persisted with each snapshot (every `SNAPSHOT_EVERY` entries, or an
//!   installed one), which holds the state, its last log id and the
//!   membership in one row. A restarted node loads the last snapshot and
//!   openraft re-applies the log from there up to the saved commit point
//!   (`save_committed` runs before every apply), so it comes back at the
//!   state it had, and no entry behind a snapshot is ever needed. A
//!   change so costs one log append, not a write of the whole state (at
//!   5,000 services, 5 MB of JSON and an fsync per applied batch).
//! - A file written by a build that stored the state per batch (rows
//!   `state`, `applied`, `membership`) is read too: whichever of it and the
//!   snapshot is newer is loaded, and the first snapshot drops the old
//!   rows.
//! - The state machine keeps the current state in memory too and publishes
//!   each applied state on a watch channel, which is how readers on this node
//!   learn of changes. A published state carries each service's checked
//!   form (see `service.rs`): a state loaded from the file or a snapshot is
//!   checked before it is published, so no reader validates a spec again.
//! - The file is closed when the last handle to it goes ([`OpenDatabase`]);
//!   [`DatabaseClosed`] fires only after redb has released the file's lock,
//!   which is what a restart in the same process waits for.

// openraft's storage traits fix the error type, a large enum; boxing it here
// would only move the cost.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, Deref, RangeBounds};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageIOError, StoredMembership, Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::outcome::Outcome;
use crate::state::RegistryState;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");

/// Largest replication batch, counted in stored (JSON) bytes, which is
/// about what the batch takes on the wire: four of the largest entries the
/// API lets through (a 1 MiB spec), a quarter of the transport's 16 MiB
/// frame limit. Small enough that a batch is written and acknowledged well
/// within openraft's per-RPC timeout (one heartbeat interval).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

type Membership = StoredMembership<NodeId, BasicNode>;
type Result<T> = std::result::Result<T, StorageError>;

fn io_error<E: std::error::Error + 'static>(error: E) -> StorageError {
    StorageIOError::write(AnyError::new(&error)).into()
}

/// Runs blocking redb work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io_error)?
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io_error)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(io_error)
}

fn read_key<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>> {
    let read = db.begin_read().map_err(io_error)?;
    let table = read.open_table(table).map_err(io_error)?;
    match table.get(key).map_err(io_error)? {
        Some(value) => Ok(Some(decode(value.value())?)),
        None => Ok(None),
    }
}

fn write_keys(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    entries: &[(&str, Vec<u8>)],
) -> Result<()> {
    commit(db, |write| {
        let mut table = write.open_table(table).map_err(io_error)?;
        for (key, value) in entries {
            table.insert(*key, value.as_slice()).map_err(io_error)?;
        }
        Ok(())
    })
}

/// Runs `work` in one write transaction and commits it durably (fsync)
/// before returning.
fn commit(db: &Database, work: impl FnOnce(&WriteTransaction) -> Result<()>) -> Result<()> {
    let mut write = db.begin_write().map_err(io_error)?;
    write
        .set_durability(Durability::Immediate)
        .map_err(io_error)?;
    work(&write)?;
    write.commit().map_err(io_error)
}

/// What the state machine publishes after each applied batch.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub state: Arc<RegistryState>,
    /// Index of the last applied log entry (0 before any).
    pub index: u64,
}

/// redb's page cache. Its default (1 GiB) let the cache grow with every
/// page the log and the snapshots ever wrote, which showed as memory per
/// service (4 KB a service at 1,000); this holds the working set of a
/// 10,000-service registry (a snapshot of about 4 MiB and the few hundred
/// log entries kept), and the kernel's page cache is behind it.
const PAGE_CACHE_BYTES: usize = 8 << 20;

/// The open redb file, shared by every part of the store.
pub struct OpenDatabase {
    // Fields drop in order: the database (closing the file, releasing its
    // lock, which can take an fsync) before the sender, whose drop is what
    // `DatabaseClosed` waits for.
    db: Database,
    closed: watch::Sender<()>,
}

impl Deref for OpenDatabase {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Resolves once the store's file is closed and may be opened again.
#[derive(Clone)]
pub struct DatabaseClosed(watch::Receiver<()>);

impl DatabaseClosed {
    pub async fn wait(mut self) {
        // Nothing is ever sent: the only way `changed` returns is an error,
        // when `OpenDatabase` has dropped the sender after the database.
        while self.0.changed().await.is_ok() {}
    }
}

/// Opens (or creates, mode 0600) the store at `path` and returns its two
/// halves.
pub async fn open(path: &Path) -> Result<(LogStore, StateMachine)> {
    let path = path.to_owned();
    let db = blocking(move || {
        // The file holds the registry's secrets: created 0600 before redb
        // opens it (redb initialises an empty file as a new database).
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_error)?;
        let db = redb::Builder::new()
            .set_cache_size(PAGE_CACHE_BYTES)
            .create(&path)
            .map_err(io_error)?;
        // Create every table now: a read transaction cannot open a table
        // that was never created.
        commit(&db, |write| {
            write.open_table(LOG).map_err(io_error)?;
            write.open_table(META).map_err(io_error)?;
            write.open_table(STATE).map_err(io_error)?;
            Ok(())
        })?;
        let (closed, _) = watch::channel(());
        Ok(Arc::new(OpenDatabase { db, closed }))
    })
    .await?;
    let loaded = {
        let db = Arc::clone(&db);
        blocking(move || load_state(&db)).await?
    };
    let (state, applied, membership) = loaded;
    state.check_services();
    let published = Applied {
        state: Arc::new(state),
        index: applied.map_or(0, |id| id.index),
    };
    let (publisher, _) = watch::channel(published.clone());
    Ok((
        LogStore {
            db: Arc::clone(&db),
        },
        StateMachine {
            db,
            current: published,
            applied,
            membership,
            publisher: Arc::new(publisher),
        },
    ))
}

/// The state to start from: the last snapshot's, or the rows an older
/// build wrote per batch if they are newer (the default state when there
/// is neither).
fn load_state(db: &Database) -> Result<(RegistryState, Option<LogId>, Membership)> {
    let legacy_applied: Option<LogId> = read_key(db, STATE, LEGACY_ROWS[1])?.flatten();
    let snapshot: Option<StoredSnapshot> = read_key(db, STATE, "snapshot")?;
    if let Some(snapshot) = snapshot {
        if snapshot.meta.last_log_id >= legacy_applied {
            return Ok((
                decode(&snapshot.data)?,
                snapshot.meta.last_log_id,
                snapshot.meta.last_membership,
            ));
        }
    }
    Ok((
        read_key(db, STATE, LEGACY_ROWS[0])?.unwrap_or_default(),
        legacy_applied,
        read_key(db, STATE, LEGACY_ROWS[2])?.unwrap_or_default(),
    ))
}

/// Rows of the state machine table an older build wrote on every applied
/// batch: the state, the last applied log id, the membership.
const LEGACY_ROWS: [&str; 3] = ["state", "applied", "membership"];

/// Writes `snapshot` as the state machine's persisted state, dropping
/// the rows of an older build (the snapshot is newer than they are).
fn save_snapshot(db: &Database, snapshot: &StoredSnapshot) -> Result<()> {
    let bytes = encode(snapshot)?;
    commit(db, |write| {
        let mut table = write.open_table(STATE).map_err(io_error)?;
        table
            .insert("snapshot", bytes.as_slice())
            .map_err(io_error)?;
        for row in LEGACY_ROWS {
            table.remove(row).map_err(io_error)?;
        }
        Ok(())
    })
}

/// The Raft log, vote and commit point.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<OpenDatabase>,
}

impl LogStore {
    /// Tells when every user of the database has let go of it and the file
    /// is closed (a redb file can be reopened in this process only then).
    pub fn database_closed(&self) -> DatabaseClosed {
        DatabaseClosed(self.db.closed.subscribe())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let db = Arc::clone(&self.db);
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || {
            let read = db.begin_read().map_err(io_error)?;
            let table = read.open_table(LOG).map_err(io_error)?;
            let mut entries = Vec::new();
            for row in table.range(bounds).map_err(io_error)? {
                let (_, value) = row.map_err(io_error)?;
                entries.push(decode(value.value())?);
            }
            Ok(entries)
        })
        .await
    }

    /// Replication's read: the entries from `start`, stopping before `end`
    /// or before the batch would pass [`MAX_BATCH_BYTES`] (always at least
    /// one entry). openraft caps a batch by count (`max_payload_entries`);
    /// this caps it by size, so a gap of large entries goes out as several
    /// frames instead of one over the transport's limit.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let read = db.begin_read().map_err(io_error)?;
            let table = read.open_table(LOG).map_err(io_error)?;
            let mut entries = Vec::new();
            let mut bytes = 0usize;
            for row in table.range(start..end).map_err(io_error)? {
                let (_, value) = row.map_err(io_error)?;
                let value = value.value();
                bytes += value.len();
                if bytes > MAX_BATCH_BYTES && !entries.is_empty() {
                    break;
                }
                entries.push(decode(value)?);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let purged: Option<LogId> = read_key(&db, META, "last_purged")?;
            let read = db.begin_read().map_err(io_error)?;
            let table = read.open_table(LOG).map_err(io_error)?;
            let last = match table.last().map_err(io_error)? {
                Some((_, value)) => Some(decode::<Entry>(value.value())?.log_id),
                None => None,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: std::cmp::max(last, purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let db = Arc::clone(&self.db);
        let bytes = encode(vote)?;
        blocking(move || write_keys(&db, META, &[("vote", bytes)])).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        let db = Arc::clone(&self.db);
        blocking(move || read_key(&db, META, "vote")).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<()> {
        let db = Arc::clone(&self.db);
        let bytes = encode(&committed)?;
        blocking(move || write_keys(&db, META, &[("committed", bytes)])).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>> {
        let db = Arc::clone(&self.db);
        blocking(move || Ok(read_key::<Option<LogId>>(&db, META, "committed")?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode(&entry)?)))
            .collect::<Result<Vec<_>>>()?;
        let db = Arc::clone(&self.db);
        let written = blocking(move || {
            commit(&db, |write| {
                let mut table = write.open_table(LOG).map_err(io_error)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice()).map_err(io_error)?;
                }
                Ok(())
            })
        })
        .await;
        // Only now, with the commit (and its fsync) done, are the entries
        // durable; on error openraft stops this node rather than lose them.
        match &written {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(error) => callback.log_io_completed(Err(std::io::Error::other(error.to_string()))),
        }
        written
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<()> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            commit(&db, |write| {
                let mut table = write.open_table(LOG).map_err(io_error)?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(io_error)
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<()> {
        let db = Arc::clone(&self.db);
        let purged = encode(&log_id)?;
        blocking(move || {
            commit(&db, |write| {
                let mut meta = write.open_table(META).map_err(io_error)?;
                meta.insert("last_purged", purged.as_slice())
                    .map_err(io_error)?;
                let mut table = write.open_table(LOG).map_err(io_error)?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(io_error)
            })
        })
        .await
    }
}

/// A stored snapshot: its meta and the registry state as JSON.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    #[serde(with = "state_text")]
    data: Vec<u8>,
}

/// The state's JSON inside a stored snapshot row, as a JSON string. Rows
/// written before held it as JSON's array of numbers, about four bytes
/// for each byte (written, fsynced and parsed at every snapshot); they
/// still read.
mod state_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(data) {
            Ok(text) => serializer.serialize_str(text),
            // Not what the store writes (its state is JSON), but kept
            // readable: serde_json writes bytes as the array of numbers.
            Err(_) => serializer.serialize_bytes(data),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Text(String),
        Numbers(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Text(text) => text.into_bytes(),
            Stored::Numbers(bytes) => bytes,
        })
    }
}

/// The registry state machine.
pub struct StateMachine {
    db: Arc<OpenDatabase>,
    current: Applied,
    applied: Option<LogId>,
    membership: Membership,
    publisher: Arc<watch::Sender<Applied>>,
}

impl StateMachine {
    /// A receiver that sees every applied state from now on.
    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.publisher.subscribe()
    }

    fn publish(&mut self, state: RegistryState) {
        self.current = Applied {
            state: Arc::new(state),
            index: self.applied.map_or(0, |id| id.index),
        };
        self.publisher.send_replace(self.current.clone());
    }
}

/// Builds a snapshot of the state as it was when the builder was made.
pub struct SnapshotBuilder {
    db: Arc<OpenDatabase>,
    state: Arc<RegistryState>,
    applied: Option<LogId>,
    membership: Membership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let data = encode(&*self.state)?;
        let snapshot_id = match self.applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let db = Arc::clone(&self.db);
        blocking(move || save_snapshot(&db, &stored)).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = (*self.current.state).clone();
        let mut applied = self.applied;
        let mut membership = self.membership.clone();
        let mut outcomes = Vec::new();
        // One answer per entry, in order, blank and membership entries too.
        for entry in entries {
            applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::Nothing,
                EntryPayload::Normal(proposal) => state.apply_proposal(&proposal),
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m);
                    Outcome::Nothing
                }
            };
            outcomes.push(outcome);
        }
        // Nothing to write: the log holds these entries, and a restart
        // applies them again from the last snapshot.
        self.applied = applied;
        self.membership = membership;
        self.publish(state);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: Arc::clone(&self.db),
            state: Arc::clone(&self.current.state),
            applied: self.applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let state: RegistryState = decode(&data)?;
        state.check_services();
        let bytes = data.len();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let db = Arc::clone(&self.db);
        blocking(move || save_snapshot(&db, &stored)).await?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish(state);
        // Rare and worth knowing: this node was too far behind for the log.
        tracing::info!(
            index = meta.last_log_id.map(|id| id.index),
            bytes,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let db = Arc::clone(&self.db);
        let stored: Option<StoredSnapshot> =
            blocking(move || read_key(&db, STATE, "snapshot")).await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::LogId;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine)> {
            let dir = tempfile::tempdir().map_err(io_error)?;
            let (log, sm) = open(&dir.path().join("registry.redb")).await?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite.
    #[test]
    fn passes_openraft_storage_suite() -> Result<()> {
        Suite::test_all(Builder)
    }

    /// Replication reads a gap of large entries in batches of at most
    /// `MAX_BATCH_BYTES` (it used to read the whole range, and a gap of
    /// 25 MB went out as one frame over the transport's limit), and an
    /// entry bigger than that alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replication_reads_are_capped_by_bytes() -> Result<()> {
        use crate::command::{Command, Proposal};
        use openraft::CommittedLeaderId;

        let dir = tempfile::tempdir().map_err(io_error)?;
        let (mut log, _sm) = open(&dir.path().join("registry.redb")).await?;
        let sizes = [1_500_000, 1_500_000, 1_500_000, 5_000_000, 10, 10];
        let rows = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let index = i as u64 + 1;
                let entry = Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
                    payload: EntryPayload::Normal(Proposal::once(Command::RemoveService {
                        name: "x".repeat(*size),
                    })),
                };
                encode(&entry).map(|bytes| (index, bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        commit(&log.db, |write| {
            let mut table = write.open_table(LOG).map_err(io_error)?;
            for (index, bytes) in &rows {
                table.insert(*index, bytes.as_slice()).map_err(io_error)?;
            }
            Ok(())
        })?;
        let indexes =
            |entries: Vec<Entry>| -> Vec<u64> { entries.iter().map(|e| e.log_id.index).collect() };
        // Two entries of 1.5 MB fit 4 MiB, a third does not.
        assert_eq!(indexes(log.limited_get_log_entries(1, 7).await?), [1, 2]);
        // An entry over the cap goes alone, and small ones fill the rest.
        assert_eq!(indexes(log.limited_get_log_entries(4, 7).await?), [4]);
        assert_eq!(indexes(log.limited_get_log_entries(5, 7).await?), [5, 6]);
        // The count bound is openraft's `end`.
        assert_eq!(indexes(log.limited_get_log_entries(5, 6).await?), [5]);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_file_reopens_as_soon_as_the_close_is_signalled() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io_error)?;
        let path = dir.path().join("registry.redb");
        for round in 0..20 {
            let (log, sm) = open(&path).await?;
            let closed = log.database_closed();
            // The last handle goes on another thread, as when Raft's
            // storage tasks end after a shutdown.
            let dropper = std::thread::spawn(move || drop((log, sm)));
            tokio::time::timeout(std::time::Duration::from_secs(10), closed.wait())
                .await
                .unwrap_or_else(|_| panic!("round {round}: close signalled"));
            let reopened = open(&path).await;
            assert!(
                reopened.is_ok(),
                "round {round}: reopen failed: {:?}",
                reopened.err()
            );
            drop(reopened);
            dropper.join().expect("dropper thread");
        }
        Ok(())
    }

    fn entry(index: u64, proposal: crate::command::Proposal) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(proposal),
        }
    }

    /// A node that learns the state from a snapshot remembers the request
    /// ids the snapshot's writer applied: a resend after the snapshot gets
    /// the first answer there too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_keeps_the_request_ids() -> Result<()> {
        use crate::command::{Command, Proposal};
        let dir = tempfile::tempdir().map_err(io_error)?;
        let create = Proposal::keyed(
            "req-1".to_owned(),
            Command::CreateService {
                spec: lb_config::ServiceSpec {
                    name: "web".to_owned(),
                    ports: vec![lb_config::PortSpec {
                        published: 80,
                        target: Some(80),
                        protocol: None,
                    }],
                    endpoints: vec![lb_config::EndpointSpec {
                        address: "10.0.0.1".to_owned(),
                        weight: None,
                    }],
                    ..Default::default()
                },
                id: String::new(),
            },
        );
        let (_log, mut writer) = open(&dir.path().join("writer.redb")).await?;
        let first = writer.apply([entry(1, create.clone())]).await?;
        assert!(matches!(first[0], Outcome::Service { .. }), "{first:?}");
        let snapshot = writer.get_snapshot_builder().await.build_snapshot().await?;

        let (reader_log, mut reader) = open(&dir.path().join("reader.redb")).await?;
        reader
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await?;
        let resent = reader.apply([entry(2, create)]).await?;
        assert_eq!(resent, first, "the resend got the first answer");
        let state = reader.subscribe().borrow().state.clone();
        assert_eq!(state.services.len(), 1);
        assert_eq!(state.services["web"].version, 1, "applied once");
        assert!(state.remembered("req-1").is_some());
        let closed = reader_log.database_closed();
        drop((reader_log, reader));
        closed.wait().await;

        // And after a restart from the file.
        let (_log, reopened) = open(&dir.path().join("reader.redb")).await?;
        let state = reopened.subscribe().borrow().state.clone();
        assert!(state.remembered("req-1").is_some(), "persisted");
        Ok(())
    }

    /// Applying writes nothing; a snapshot persists the state, and a file
    /// of the older layout (the state written per batch) loads as it was
    /// until a newer snapshot replaces its rows.
    #[test]
    fn a_snapshot_row_holds_the_state_as_text_and_old_rows_still_read() -> Result<()> {
        let state = encode(&RegistryState::default())?;
        let stored = StoredSnapshot {
            meta: SnapshotMeta::default(),
            data: state.clone(),
        };
        let row = encode(&stored)?;
        let text = String::from_utf8(row.clone()).map_err(io_error)?;
        assert!(text.contains(r#""data":"{"#), "{text}");
        assert!(
            row.len() < state.len() * 2,
            "{} bytes for {}",
            row.len(),
            state.len()
        );
        assert_eq!(decode::<StoredSnapshot>(&row)?.data, state);

        // A row of the layout before: the state as an array of numbers.
        let old = serde_json::json!({ "meta": stored.meta, "data": state });
        let old_row = encode(&old)?;
        assert!(old_row.len() > state.len() * 3);
        assert_eq!(decode::<StoredSnapshot>(&old_row)?.data, state);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_state_is_persisted_by_snapshots_and_old_rows_still_load() -> Result<()> {
        use crate::cluster::ClusterInfo;
        use crate::command::{Command, Proposal};
        let dir = tempfile::tempdir().map_err(io_error)?;
        let path = dir.path().join("registry.redb");
        let reopen = |path: std::path::PathBuf| async move {
            let (log, sm) = open(&path).await?;
            let loaded = (sm.applied, sm.current.state.clone());
            let closed = log.database_closed();
            drop((log, sm));
            closed.wait().await;
            Result::Ok(loaded)
        };
        let init = |id: &str| {
            Proposal::from(Command::InitCluster {
                cluster: ClusterInfo {
                    id: id.to_owned(),
                    ..ClusterInfo::default()
                },
                vip_range: crate::cluster::DEFAULT_VIP_RANGE,
                vip_range_v6: None,
                dns_domain: None,
            })
        };
        let cluster_id = |state: &RegistryState| state.cluster.as_ref().map(|c| c.id.clone());
        let six_and_seven = || {
            [
                entry(6, init("ignored")),
                entry(7, Command::RemoveService { name: "x".into() }.into()),
            ]
        };

        // An older build's rows: the state as of entry 5.
        {
            let (log, sm) = open(&path).await?;
            let mut legacy = RegistryState::default();
            legacy.apply_proposal(&init("legacy"));
            let applied = Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 5));
            write_keys(
                &sm.db,
                STATE,
                &[
                    ("state", encode(&legacy)?),
                    ("applied", encode(&applied)?),
                    ("membership", encode(&Membership::default())?),
                ],
            )?;
            let closed = log.database_closed();
            drop((log, sm));
            closed.wait().await;
        }
        let (applied, state) = reopen(path.clone()).await?;
        assert_eq!(applied.map(|id| id.index), Some(5));
        assert_eq!(cluster_id(&state).as_deref(), Some("legacy"));

        // Applying entries 6 and 7 writes nothing: a reopen is at 5 again
        // (openraft applies 6 and 7 again from the log).
        {
            let (log, mut sm) = open(&path).await?;
            sm.apply(six_and_seven()).await?;
            assert_eq!(sm.applied.map(|id| id.index), Some(7));
            let closed = log.database_closed();
            drop((log, sm));
            closed.wait().await;
        }
        assert_eq!(reopen(path.clone()).await?.0.map(|id| id.index), Some(5));

        // A snapshot at 7 is newer than the old rows: it is what loads, and
        // the old rows are gone.
        {
            let (log, mut sm) = open(&path).await?;
            sm.apply(six_and_seven()).await?;
            sm.get_snapshot_builder().await.build_snapshot().await?;
            for row in LEGACY_ROWS {
                assert!(
                    read_key::<serde_json::Value>(&sm.db, STATE, row)?.is_none(),
                    "{row} left"
                );
            }
            let closed = log.database_closed();
            drop((log, sm));
            closed.wait().await;
        }
        let (applied, state) = reopen(path).await?;
        assert_eq!(applied.map(|id| id.index), Some(7));
        assert_eq!(
            cluster_id(&state).as_deref(),
            Some("legacy"),
            "a second init is refused"
        );
        Ok(())
    }
}
