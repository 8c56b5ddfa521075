//! Backend selection: pickers over one immutable backend set.
//!
//! # Layout
//!
//! - [`Backend`] is one upstream address with the state that must outlive a
//!   routing snapshot: its count of connections in flight (for least-conn),
//!   its passive-ejection deadline and its metric handles. The routing table
//!   carries a backend's `Arc` over from one snapshot to the next, so a reload
//!   keeps counts and ejections.
//! - [`BackendSet`] is the immutable list of backends of one route with their
//!   weights and a [`Picker`] whose tables were computed when the set was built
//!   (the smooth weighted period, the Maglev lookup table).
//!
//! # Maglev table size
//!
//! A Maglev table is sized to its backends ([`maglev_table_size`]): the
//! smallest prime at least 100 × the backend count rounded up to a power of
//! two (Maglev's bound for about 1% imbalance), never below
//! [`MAGLEV_MIN_TABLE_SIZE`] and never above [`MAGLEV_MAX_TABLE_SIZE`]. A
//! set of 3 backends holds 1,601 slots (3 KiB) instead of 65,537 (128 KiB).
//! The size depends on the count alone, so every node builds the same
//! table; and it changes only when the count crosses a power of two, since
//! a table of another size maps almost every client anew: adding or
//! removing one backend between two such steps keeps Maglev's minimal
//! disruption.
//!
//! # Invariants of the hot path
//!
//! A pick takes `&self`, never locks and never allocates. Round-robin and
//! weighted keep their cursors in *lanes*: each listen address has its own
//! lane, shared by its accept loops on every proxy thread, so connections
//! arriving on different addresses never share a cursor's cache line, while
//! all connections of one address see an exact round-robin. An ejected
//! backend is skipped by checking one atomic; the set is not rebuilt. If
//! every backend is ejected the pick fails open and returns the backend the
//! algorithm chose: trying a possibly recovered backend beats refusing the
//! client outright.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lb_config::Algorithm;

use crate::metrics::BackendMetrics;

/// Largest Maglev lookup table: a prime, and 100 × 655 backends; a set with
/// more backends than that is balanced within a little more than 1%.
pub const MAGLEV_MAX_TABLE_SIZE: usize = 65_537;

/// Smallest Maglev lookup table (100 × 16 backends, rounded up to a prime):
/// a set of up to 16 backends never changes its table's size.
pub const MAGLEV_MIN_TABLE_SIZE: usize = 1_601;

/// Most independent cursors per round-robin or weighted picker. Listen
/// addresses take lanes in turn; more addresses than lanes share cursors,
/// which stays correct (the cursor is atomic) and only adds contention.
pub const MAX_LANES: usize = 16;

/// Most backends a Maglev table spreads over (its slots hold u16 indices);
/// backends past this many get no slots.
pub const MAX_MAGLEV_BACKENDS: usize = u16::MAX as usize;

/// The weighted period is precomputed; its length is the sum of the weights
/// divided by their greatest common divisor, capped so that building it stays
/// cheap on reload.
pub const MAX_WEIGHTED_PERIOD: u64 = 1 << 20;

/// Milliseconds on a process-wide monotonic clock, never 0 (0 means "not
/// ejected" in [`Backend`]).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// One upstream address and its long-lived state.
pub struct Backend {
    pub addr: SocketAddr,
    /// Connections picked for this backend and not yet closed; least-conn
    /// compares these.
    active: AtomicU32,
    /// `now_ms()` deadline until which the backend is skipped; 0 when it is
    /// not ejected.
    ejected_until_ms: AtomicU64,
    /// Set by an ejection, cleared by the next successful connect: the
    /// ejection and the recovery are logged once each.
    failing: AtomicBool,
    pub metrics: Arc<BackendMetrics>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("active", &self.active())
            .field("ejected", &self.is_ejected())
            .finish()
    }
}

impl Backend {
    pub fn new(addr: SocketAddr, metrics: Arc<BackendMetrics>) -> Self {
        Self {
            addr,
            active: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            metrics,
        }
    }

    /// Whether the backend may be picked. The common case (never ejected) is
    /// one relaxed load; only an ejected backend reads the clock, and the first
    /// pick after the deadline clears the ejection.
    #[inline]
    pub fn is_available(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        let _ =
            self.ejected_until_ms
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        true
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Skip this backend for `duration` (passive health check). Returns
    /// whether it was healthy until now (no ejection since its last
    /// successful connect), so the caller logs a failing backend once.
    pub fn eject(&self, duration: Duration) -> bool {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 2);
        self.ejected_until_ms
            .store(now_ms().saturating_add(millis.max(1)), Ordering::Relaxed);
        self.metrics.ejections.inc();
        !self.failing.swap(true, Ordering::Relaxed)
    }

    /// After a successful connect: whether this is the first since an
    /// ejection (the backend recovered). One relaxed load when healthy.
    #[inline]
    pub fn connected(&self) -> bool {
        self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed)
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts one connection as in flight until the guard drops.
    pub fn track_connection(self: &Arc<Self>) -> ActiveConnection {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.active.inc();
        ActiveConnection {
            backend: Arc::clone(self),
        }
    }
}

/// A connection counted against its backend; dropping it un-counts it.
pub struct ActiveConnection {
    backend: Arc<Backend>,
}

impl ActiveConnection {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.backend.metrics.active.dec();
    }
}

/// What a pick may depend on besides the set itself.
#[derive(Debug, Clone, Copy)]
pub struct PickContext {
    /// The client's address: Maglev's key.
    pub client: IpAddr,
    /// The caller's cursor lane (see the module doc).
    pub lane: usize,
}

/// A cursor on its own cache line, so lanes never share one.
#[derive(Default)]
#[repr(align(128))]
struct PaddedCursor(AtomicUsize);

/// Cursors per picker: one per core, rounded up to a power of two (so a
/// lane is a mask, not a division), at most [`MAX_LANES`]. More lanes than
/// threads that can run at once only cost memory: 128 bytes each, in
/// every round-robin and weighted backend set.
fn lane_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(MAX_LANES, |cores| cores.get().next_power_of_two())
            .min(MAX_LANES)
    })
}

fn lanes() -> Box<[PaddedCursor]> {
    (0..lane_count()).map(|_| PaddedCursor::default()).collect()
}

/// The cursor of `lane` (the cursor count is a power of two).
#[inline]
fn cursor_of(cursors: &[PaddedCursor], lane: usize) -> &AtomicUsize {
    &cursors[lane & (cursors.len() - 1)].0
}

/// The algorithm-specific part of a [`BackendSet`], computed once per set.
enum Picker {
    RoundRobin {
        cursors: Box<[PaddedCursor]>,
    },
    Random,
    Weighted {
        /// Backend indices in nginx's smooth weighted order for one period.
        period: Box<[u32]>,
        cursors: Box<[PaddedCursor]>,
    },
    LeastConn,
    /// Backend index per slot ([`maglev_table_size`] of them); u16 halves
    /// the table (at most 128 KiB) so more of it stays in cache. A Maglev
    /// set uses at most 65,535 backends.
    Maglev {
        table: Box<[u16]>,
    },
}

/// The backends of one route and the picker over them.
pub struct BackendSet {
    backends: Box<[Arc<Backend>]>,
    weights: Box<[u32]>,
    picker: Picker,
}

impl std::fmt::Debug for BackendSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSet")
            .field("backends", &self.backends)
            .field("weights", &self.weights)
            .finish()
    }
}

impl BackendSet {
    /// Builds a set and its picker tables. Weights of 0 are treated as 1.
    pub fn new(algorithm: Algorithm, members: Vec<(Arc<Backend>, u32)>) -> Self {
        let (backends, weights): (Vec<_>, Vec<_>) =
            members.into_iter().map(|(b, w)| (b, w.max(1))).unzip();
        let picker = match algorithm {
            Algorithm::RoundRobin => Picker::RoundRobin { cursors: lanes() },
            Algorithm::Random => Picker::Random,
            Algorithm::Weighted => Picker::Weighted {
                period: smooth_weighted_period(&weights).into_boxed_slice(),
                cursors: lanes(),
            },
            Algorithm::LeastConn => Picker::LeastConn,
            Algorithm::Maglev => {
                let keys: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
                let size = maglev_table_size(keys.len());
                Picker::Maglev {
                    table: maglev_table(&keys, &weights, size).into_boxed_slice(),
                }
            }
        };
        Self {
            backends: backends.into_boxed_slice(),
            weights: weights.into_boxed_slice(),
            picker,
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Chooses a backend for a new connection; `None` only when the set is
    /// empty. Skips ejected backends; fails open when all are ejected.
    #[inline]
    pub fn pick(&self, ctx: PickContext) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let index = match &self.picker {
            Picker::RoundRobin { cursors } => {
                let cursor = cursor_of(cursors, ctx.lane);
                // On a skip the cursor moves on, so an ejected backend's turns
                // are spread over the others instead of all going to its
                // neighbour.
                self.redraw(|| cursor.fetch_add(1, Ordering::Relaxed) % n)
            }
            Picker::Random => self.redraw(|| fastrand::usize(..n)),
            Picker::Weighted { period, cursors } => {
                let at =
                    cursor_of(cursors, ctx.lane).fetch_add(1, Ordering::Relaxed) % period.len();
                self.weighted_from(period, at)
            }
            Picker::LeastConn => self.power_of_two_choices(),
            Picker::Maglev { table } => self.maglev(table, ctx.client),
        };
        Some(&self.backends[index])
    }

    /// Draws up to n candidates from `draw` and returns the first available
    /// one; then the next available after the first draw; then (fail open)
    /// the first draw.
    #[inline]
    fn redraw(&self, mut draw: impl FnMut() -> usize) -> usize {
        let first = draw();
        if self.backends[first].is_available() {
            return first;
        }
        (1..self.backends.len())
            .map(|_| draw())
            .find(|&i| self.backends[i].is_available())
            .unwrap_or_else(|| self.first_available_from(first))
    }

    /// `start` if available, else the next available index after it, else
    /// `start` (fail open).
    #[inline]
    fn first_available_from(&self, start: usize) -> usize {
        let n = self.backends.len();
        if self.backends[start].is_available() {
            return start;
        }
        (1..n)
            .map(|step| (start + step) % n)
            .find(|&i| self.backends[i].is_available())
            .unwrap_or(start)
    }

    /// The period entry at `at`; when that backend is ejected, the next entries
    /// of the period (which keep the weights' proportions among the rest),
    /// bounded, then any available backend.
    #[inline]
    fn weighted_from(&self, period: &[u32], at: usize) -> usize {
        let chosen = period[at] as usize;
        if self.backends[chosen].is_available() {
            return chosen;
        }
        let probes = period.len().min(4 * self.backends.len());
        (1..probes)
            .map(|step| period[(at + step) % period.len()] as usize)
            .find(|&i| self.backends[i].is_available())
            .unwrap_or_else(|| self.first_available_from(chosen))
    }

    /// Two random distinct backends; the one with fewer connections per unit
    /// of weight wins (Mitzenmacher's power of two choices).
    #[inline]
    fn power_of_two_choices(&self) -> usize {
        let n = self.backends.len();
        if n == 1 {
            return 0;
        }
        let a = fastrand::usize(..n);
        let mut b = fastrand::usize(..n - 1);
        if b >= a {
            b += 1;
        }
        let (ba, bb) = (&self.backends[a], &self.backends[b]);
        let (avail_a, avail_b) = (ba.is_available(), bb.is_available());
        match (avail_a, avail_b) {
            (true, false) => a,
            (false, true) => b,
            (false, false) => self.first_available_from(a),
            (true, true) => {
                // load_a / w_a <= load_b / w_b, without division.
                let load_a = u64::from(ba.active()) * u64::from(self.weights[b]);
                let load_b = u64::from(bb.active()) * u64::from(self.weights[a]);
                if load_a <= load_b {
                    a
                } else {
                    b
                }
            }
        }
    }

    /// The table entry for the client's address; when that backend is
    /// ejected, a few rehashed entries (which spread the ejected backend's
    /// clients over the others in proportion), then any available backend.
    #[inline]
    fn maglev(&self, table: &[u16], client: IpAddr) -> usize {
        let key = ip_key(client);
        let chosen = table[fast_range(spread(key), table.len())] as usize;
        if self.backends[chosen].is_available() {
            return chosen;
        }
        (1..=8u64)
            .map(|seed| {
                table[fast_range(
                    mix64(key ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    table.len(),
                )] as usize
            })
            .find(|&i| self.backends[i].is_available())
            .unwrap_or_else(|| self.first_available_from(chosen))
    }

    /// The Maglev table, for tests of its balance.
    pub fn maglev_lookup_table(&self) -> Option<&[u16]> {
        match &self.picker {
            Picker::Maglev { table } => Some(table),
            _ => None,
        }
    }
}

/// One period of nginx's smooth weighted round-robin: each step adds every
/// weight to its backend's current value, picks the largest current value
/// (first one on ties) and subtracts the total weight from it. The weights are
/// first divided by their gcd; a period longer than [`MAX_WEIGHTED_PERIOD`]
/// has its weights scaled down proportionally (never below 1).
pub fn smooth_weighted_period(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u64> = weights
        .iter()
        .map(|w| u64::from(w / divisor).max(1))
        .collect();
    let total: u64 = reduced.iter().sum();
    if total > MAX_WEIGHTED_PERIOD {
        for w in &mut reduced {
            *w = (*w * MAX_WEIGHTED_PERIOD / total).max(1);
        }
    }
    let total: i64 = reduced.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; reduced.len()];
    let mut period = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in reduced.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        period.push(best as u32);
    }
    period
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The Maglev table size for `backends` backends (see the module doc): the
/// smallest prime at least 100 × `backends` rounded up to a power of two,
/// within [`MAGLEV_MIN_TABLE_SIZE`] and [`MAGLEV_MAX_TABLE_SIZE`].
pub fn maglev_table_size(backends: usize) -> usize {
    let wanted = backends
        .clamp(1, MAX_MAGLEV_BACKENDS)
        .next_power_of_two()
        .saturating_mul(100);
    if wanted >= MAGLEV_MAX_TABLE_SIZE {
        return MAGLEV_MAX_TABLE_SIZE;
    }
    (wanted.max(MAGLEV_MIN_TABLE_SIZE)..MAGLEV_MAX_TABLE_SIZE)
        .find(|&n| is_prime(n))
        .unwrap_or(MAGLEV_MAX_TABLE_SIZE)
}

/// Trial division; only called on table sizes (at most 65,537).
fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// Builds a Maglev lookup table (Eisenbud et al., NSDI 2016) of prime size
/// `size`. Each backend walks its own permutation of the slots, derived from
/// its address so every node builds the same table; backends take turns
/// claiming their next free slot, a backend of weight w taking w turns per
/// round. With equal weights each backend ends with ⌊M/n⌋ or ⌈M/n⌉ slots, and
/// removing one backend moves little more than that backend's own slots.
pub fn maglev_table(keys: &[SocketAddr], weights: &[u32], size: usize) -> Vec<u16> {
    const EMPTY: u16 = u16::MAX;
    // Slot values are u16 and u16::MAX marks an empty slot.
    let keys = &keys[..keys.len().min(MAX_MAGLEV_BACKENDS)];
    let mut table = vec![EMPTY; size];
    if keys.is_empty() {
        return table;
    }
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let turns: Vec<u32> = weights.iter().map(|w| (w / divisor).max(1)).collect();
    let modulus = size as u64;
    let walks: Vec<(u64, u64)> = keys
        .iter()
        .map(|addr| {
            let offset = hash_addr(addr, 0x6d61_676c_6576_0001) % modulus;
            let skip = hash_addr(addr, 0x6d61_676c_6576_0002) % (modulus - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; keys.len()];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in walks.iter().enumerate() {
            for _ in 0..turns[i] {
                let mut slot = ((offset + next[i] * skip) % modulus) as usize;
                while table[slot] != EMPTY {
                    next[i] += 1;
                    slot = ((offset + next[i] * skip) % modulus) as usize;
                }
                table[slot] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
    }
    table
}

/// A stable hash of a socket address (FNV-1a over its bytes, then a
/// finalizer): the same on every node and every build.
fn hash_addr(addr: &SocketAddr, seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match addr.ip() {
        IpAddr::V4(ip) => eat(&ip.octets()),
        IpAddr::V6(ip) => eat(&ip.octets()),
    }
    eat(&addr.port().to_be_bytes());
    mix64(h)
}

/// Folds an IP address into 64 bits.
#[inline]
fn ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u64) ^ ((bits >> 64) as u64).rotate_left(17)
        }
    }
}

/// One xor-shift and one multiply (Fibonacci hashing): the high bits of the
/// product, which `fast_range` uses, are well mixed even for sequential
/// addresses, at a third of `mix64`'s cost on the per-connection path.
#[inline]
fn spread(key: u64) -> u64 {
    (key ^ (key >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The splitmix64 finalizer: a cheap, well-mixed 64-bit hash.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a uniform 64-bit hash onto `0..n` without a division (Lemire).
#[inline]
fn fast_range(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn backend(i: usize) -> Arc<Backend> {
        let addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8)),
            80,
        );
        Arc::new(Backend::new(addr, BackendMetrics::detached()))
    }

    fn set(algorithm: Algorithm, weights: &[u32]) -> BackendSet {
        BackendSet::new(
            algorithm,
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (backend(i), w))
                .collect(),
        )
    }

    fn ctx(lane: usize) -> PickContext {
        PickContext {
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lane,
        }
    }

    fn index_of(set: &BackendSet, b: &Arc<Backend>) -> usize {
        set.backends()
            .iter()
            .position(|x| Arc::ptr_eq(x, b))
            .unwrap()
    }

    #[test]
    fn nginx_smooth_order_for_5_1_1() {
        // The sequence nginx documents for weights {a:5, b:1, c:1}.
        assert_eq!(
            smooth_weighted_period(&[5, 1, 1]),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
        assert_eq!(smooth_weighted_period(&[3, 1, 1]), vec![0, 1, 0, 2, 0]);
        // Reduced by the gcd: 30:10:10 has the same 5-long period.
        assert_eq!(smooth_weighted_period(&[30, 10, 10]).len(), 5);
    }

    #[test]
    fn round_robin_lanes_are_independent_and_exact() {
        let s = set(Algorithm::RoundRobin, &[1, 1, 1]);
        let lane0: Vec<usize> = (0..6)
            .map(|_| index_of(&s, s.pick(ctx(0)).unwrap()))
            .collect();
        let lane1: Vec<usize> = (0..3)
            .map(|_| index_of(&s, s.pick(ctx(1)).unwrap()))
            .collect();
        assert_eq!(lane0, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(lane1, vec![0, 1, 2]);
    }

    #[test]
    fn ejected_backend_is_skipped_then_returns() {
        let s = set(Algorithm::RoundRobin, &[1, 1, 1]);
        s.backends()[1].eject(Duration::from_millis(50));
        let picks: Vec<usize> = (0..6)
            .map(|_| index_of(&s, s.pick(ctx(0)).unwrap()))
            .collect();
        assert!(!picks.contains(&1), "{picks:?}");
        std::thread::sleep(Duration::from_millis(60));
        let picks: Vec<usize> = (0..6)
            .map(|_| index_of(&s, s.pick(ctx(0)).unwrap()))
            .collect();
        assert!(picks.contains(&1), "{picks:?}");
        assert!(!s.backends()[1].is_ejected());
    }

    #[test]
    fn ejection_and_recovery_are_reported_once_each() {
        let b = backend(1);
        assert!(!b.connected(), "a healthy backend has not recovered");
        assert!(b.eject(Duration::from_millis(1)));
        assert!(!b.eject(Duration::from_millis(1)), "still failing: not new");
        assert!(b.connected());
        assert!(!b.connected());
        assert!(
            b.eject(Duration::from_millis(1)),
            "failing again after a recovery"
        );
    }

    #[test]
    fn all_ejected_fails_open() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::Weighted,
            Algorithm::LeastConn,
            Algorithm::Maglev,
        ] {
            let s = set(algorithm, &[1, 2]);
            for b in s.backends() {
                b.eject(Duration::from_secs(60));
            }
            assert!(s.pick(ctx(0)).is_some(), "{algorithm}");
        }
        assert!(set(Algorithm::RoundRobin, &[]).pick(ctx(0)).is_none());
    }

    #[test]
    fn every_algorithm_skips_an_ejected_backend() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::Weighted,
            Algorithm::LeastConn,
            Algorithm::Maglev,
        ] {
            let s = set(algorithm, &[1, 1, 1, 1]);
            s.backends()[2].eject(Duration::from_secs(60));
            for i in 0..400u32 {
                let c = PickContext {
                    client: IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761))),
                    lane: 0,
                };
                assert_ne!(index_of(&s, s.pick(c).unwrap()), 2, "{algorithm}");
            }
        }
    }

    #[test]
    fn least_conn_avoids_the_loaded_backend() {
        let s = set(Algorithm::LeastConn, &[1, 1, 1]);
        let held: Vec<_> = (0..10)
            .map(|_| s.backends()[0].track_connection())
            .collect();
        for _ in 0..300 {
            assert_ne!(index_of(&s, s.pick(ctx(0)).unwrap()), 0);
        }
        drop(held);
        assert_eq!(s.backends()[0].active(), 0);
    }

    #[test]
    fn maglev_table_size_is_a_prime_over_100_per_backend_within_bounds() {
        assert_eq!(maglev_table_size(0), MAGLEV_MIN_TABLE_SIZE);
        assert_eq!(maglev_table_size(3), MAGLEV_MIN_TABLE_SIZE);
        assert_eq!(maglev_table_size(16), MAGLEV_MIN_TABLE_SIZE);
        assert!(is_prime(MAGLEV_MIN_TABLE_SIZE) && is_prime(MAGLEV_MAX_TABLE_SIZE));
        for n in 1..=1_000 {
            let size = maglev_table_size(n);
            assert!(is_prime(size), "{n}: {size}");
            assert!(size >= (100 * n).min(MAGLEV_MAX_TABLE_SIZE), "{n}: {size}");
            assert!(size <= MAGLEV_MAX_TABLE_SIZE, "{n}: {size}");
            // The smallest such prime for the count rounded up to a power
            // of two: no prime between the bound and the size.
            let bound = (100 * n.next_power_of_two()).max(MAGLEV_MIN_TABLE_SIZE);
            if size < MAGLEV_MAX_TABLE_SIZE {
                assert!((bound..size).all(|m| !is_prime(m)), "{n}: {size}");
            }
            // Constant between powers of two.
            assert_eq!(size, maglev_table_size(n.next_power_of_two()), "{n}");
        }
        assert_eq!(maglev_table_size(17), 3_203);
        assert_eq!(maglev_table_size(655), MAGLEV_MAX_TABLE_SIZE);
        assert_eq!(
            maglev_table_size(MAX_MAGLEV_BACKENDS + 9),
            MAGLEV_MAX_TABLE_SIZE
        );
        let s = set(Algorithm::Maglev, &[1; 40]);
        assert_eq!(s.maglev_lookup_table().unwrap().len(), 6_421);
    }

    #[test]
    fn maglev_weights_shape_the_table() {
        let s = set(Algorithm::Maglev, &[3, 1]);
        let table = s.maglev_lookup_table().unwrap();
        let heavy = table.iter().filter(|&&i| i == 0).count();
        let share = heavy as f64 / table.len() as f64;
        assert!((share - 0.75).abs() < 0.01, "{share}");
    }
}
