//! Makes the cluster's VIP ranges local on this node: one AnyIP route per
//! range, for both address families, so containers reach VIPs as host
//! processes do.
//!
//! A range is made local with a route of type local on `lo`, as
//! `ip route add local RANGE dev lo` (or `ip -6 route add ...`) does,
//! through netlink (`rtnetlink`; no `ip` binary in the image): every
//! address of the range is then this host's, lbd binds VIPs without
//! configuring each one, and a packet a container sends to a VIP (routed
//! to the host through its bridge gateway) is delivered to lbd's socket
//! instead of being forwarded. A v4 range inside 127.0.0.0/8 is local
//! already (but a container cannot reach it), so it needs no route; no v6
//! range is.
//!
//! The ranges are the registry's (`InitCluster` sets them once): the
//! keeper follows the applied state, so a joining node, whose state is
//! empty when it starts, routes the cluster's ranges once they replicate
//! and never the defaults.
//!
//! ```text
//! state initialised ─> wanted ranges (v4 unless in 127/8, v6 if any)
//!   add `local RANGE dev lo` (table local) ─ added ─> owned: removed at stop
//!                                           ├ exists ─> someone else's (another lbd on
//!                                           │           this machine): left alone
//!                                           └ refused (no CAP_NET_ADMIN) ─> one warning
//!                                             naming the command to run by hand
//! every KEEP_EVERY: add again (so a node sharing the machine takes over a route when the
//!         lbd that added it stops)
//! stop:   delete the routes this lbd added
//! ```
//!
//! On a node without the route (lbd lacks CAP_NET_ADMIN and nobody added
//! it), v4 VIPs cannot be bound: the proxy keeps retrying them, as it does
//! for any address it cannot bind, and the warning says why.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::TryStreamExt;
use raft_state::state::{RegistryState, VipRange};
use raft_state::store::Applied;
use rtnetlink::packet_route::route::{RouteMessage, RouteScope, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the routes are checked: a node that shares the machine with
/// the lbd that added one takes it over within this time when that one
/// stops.
pub const KEEP_EVERY: Duration = Duration::from_secs(2);

/// The kernel's local routing table, where `ip route add local` puts a
/// route of type local.
const TABLE_LOCAL: u32 = 255;

const EEXIST: i32 = 17;

/// Whether `range` is local without a route (inside 127.0.0.0/8).
pub fn is_loopback(range: VipRange) -> bool {
    range.base.is_loopback() && range.prefix_len >= 8
}

/// A range of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    base: IpAddr,
    prefix_len: u8,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

impl Range {
    /// The `ip` command that adds the route by hand.
    fn command(&self) -> String {
        let family = if self.base.is_ipv6() { " -6" } else { "" };
        format!("ip{family} route add local {self} dev lo")
    }
}

/// The ranges of `state` that need a route: none before the cluster is
/// initialised (a joiner's state until it replicates).
fn wanted(state: &RegistryState) -> Vec<Range> {
    if state.cluster.is_none() {
        return Vec::new();
    }
    let v4 = (!is_loopback(state.vip_range)).then_some(Range {
        base: state.vip_range.base.into(),
        prefix_len: state.vip_range.prefix_len,
    });
    let v6 = state.vip_range_v6.map(|range| Range {
        base: range.base.into(),
        prefix_len: range.prefix_len,
    });
    v4.into_iter().chain(v6).collect()
}

/// The route's message: `local RANGE dev lo table local scope host`.
fn local_route(range: Range, loopback_index: u32) -> Option<RouteMessage> {
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(range.base, range.prefix_len)
        .ok()?;
    Some(
        builder
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(TABLE_LOCAL)
            .output_interface(loopback_index)
            .build(),
    )
}

/// The index of the loopback interface.
async fn loopback_index(handle: &Handle) -> Result<u32, String> {
    let mut links = handle.link().get().match_name("lo").execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err("no loopback interface".to_owned()),
        Err(e) => Err(format!("cannot find the loopback interface: {e}")),
    }
}

/// One range's route and what this lbd knows of it.
struct KeptRoute {
    range: Range,
    message: RouteMessage,
    /// Whether this lbd added it (and so removes it at stop).
    owned: bool,
    /// Whether the last try failed (warned once until it succeeds).
    failing: bool,
}

/// The routes of the registry's ranges, kept by [`RouteKeeper::run`].
pub struct RouteKeeper {
    handle: Handle,
    loopback_index: u32,
    routes: Vec<KeptRoute>,
}

impl RouteKeeper {
    /// Connects to netlink and makes the ranges `state` names local now
    /// (so the first VIP binds succeed); `None` when netlink is out of
    /// reach (warned).
    pub async fn start(state: &RegistryState) -> Option<Self> {
        let handle = match rtnetlink::new_connection() {
            Ok((connection, handle, _)) => {
                tokio::spawn(connection);
                handle
            }
            Err(error) => {
                warn!(%error, "no netlink socket: VIPs outside 127.0.0.0/8 are not reachable until their range is routed by hand (`ip route add local RANGE dev lo`)");
                return None;
            }
        };
        let loopback_index = match loopback_index(&handle).await {
            Ok(index) => index,
            Err(error) => {
                warn!(%error, "VIPs outside 127.0.0.0/8 are not reachable until their range is routed by hand (`ip route add local RANGE dev lo`)");
                return None;
            }
        };
        let mut keeper = Self {
            handle,
            loopback_index,
            routes: Vec::new(),
        };
        keeper.follow(wanted(state)).await;
        Some(keeper)
    }

    /// Keeps the routes of `wanted` (removing those this lbd added for a
    /// range no longer wanted), then makes sure each is there.
    async fn follow(&mut self, wanted: Vec<Range>) {
        let current: Vec<Range> = self.routes.iter().map(|route| route.range).collect();
        if current != wanted {
            let (keep, drop): (Vec<KeptRoute>, Vec<KeptRoute>) = std::mem::take(&mut self.routes)
                .into_iter()
                .partition(|route| wanted.contains(&route.range));
            for route in drop {
                self.remove(route).await;
            }
            self.routes = keep;
            for range in wanted {
                if self.routes.iter().any(|route| route.range == range) {
                    continue;
                }
                match local_route(range, self.loopback_index) {
                    Some(message) => self.routes.push(KeptRoute {
                        range,
                        message,
                        owned: false,
                        failing: false,
                    }),
                    None => warn!(%range, "not a routable prefix"),
                }
            }
        }
        for route in &mut self.routes {
            ensure(&self.handle, route).await;
        }
    }

    /// Deletes `route` if this lbd added it.
    async fn remove(&self, route: KeptRoute) {
        if !route.owned {
            return;
        }
        let range = route.range;
        match self.handle.route().del(route.message).execute().await {
            Ok(()) => info!(%range, "VIP range route removed"),
            Err(error) => warn!(%range, %error, "cannot remove the VIP range route"),
        }
    }

    /// Keeps the routes of the applied state's ranges until `stop`, then
    /// removes those this lbd added.
    pub async fn run(mut self, mut changes: watch::Receiver<Applied>, stop: CancellationToken) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_EVERY, KEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for route in &mut self.routes {
                        ensure(&self.handle, route).await;
                    }
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let wanted = wanted(&changes.borrow_and_update().state);
                    self.follow(wanted).await;
                }
                () = stop.cancelled() => break,
            }
        }
        for route in std::mem::take(&mut self.routes) {
            self.remove(route).await;
        }
    }
}

/// Adds `route` if it is missing.
async fn ensure(handle: &Handle, route: &mut KeptRoute) {
    let range = route.range;
    match handle.route().add(route.message.clone()).execute().await {
        Ok(()) => {
            info!(%range, "VIP range made local ({})", range.command());
            route.owned = true;
            route.failing = false;
        }
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -EEXIST => route.failing = false,
        Err(error) if !route.failing => {
            warn!(
                %range, %error,
                "cannot make the VIP range local (lbd needs CAP_NET_ADMIN): its VIPs are not \
                 reachable until `{}` is run", range.command()
            );
            route.failing = true;
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_state::state::{ClusterInfo, VipRangeV6};

    #[test]
    fn only_v4_ranges_inside_loopback_need_no_route() {
        let parse = |text| VipRange::parse(text).expect("range");
        assert!(is_loopback(parse("127.77.0.0/16")));
        assert!(!is_loopback(parse("198.18.0.0/16")));
        assert!(!is_loopback(parse("10.0.0.0/8")));
    }

    #[test]
    fn the_ranges_wanted_are_the_initialised_clusters() {
        let mut state = RegistryState::default();
        assert_eq!(wanted(&state), [], "a joiner's empty state routes nothing");
        state.cluster = Some(ClusterInfo::default());
        state.vip_range = VipRange::parse("10.20.0.0/16").expect("v4");
        state.vip_range_v6 = Some(VipRangeV6::parse("fd77::/112").expect("v6"));
        let shown: Vec<String> = wanted(&state).iter().map(Range::to_string).collect();
        assert_eq!(shown, ["10.20.0.0/16", "fd77::/112"]);
        state.vip_range = VipRange::parse("127.77.0.0/16").expect("loopback");
        state.vip_range_v6 = None;
        assert_eq!(wanted(&state), []);
    }

    #[test]
    fn routes_of_both_families_are_local_on_lo() {
        for (text, command) in [
            ("198.18.0.0/16", "ip route add local 198.18.0.0/16 dev lo"),
            ("fd77::/112", "ip -6 route add local fd77::/112 dev lo"),
        ] {
            let (base, len) = text.split_once('/').expect("cidr");
            let range = Range {
                base: base.parse().expect("ip"),
                prefix_len: len.parse().expect("len"),
            };
            assert_eq!(range.command(), command);
            let message = local_route(range, 1).expect("route");
            assert_eq!(message.header.kind, RouteType::Local);
            assert_eq!(message.header.scope, RouteScope::Host);
            assert_eq!(message.header.destination_prefix_length, range.prefix_len);
        }
        let too_long = Range {
            base: "10.0.0.0".parse().expect("ip"),
            prefix_len: 40,
        };
        assert!(local_route(too_long, 1).is_none());
    }
}
