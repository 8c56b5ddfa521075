//! Makes the cluster's VIP range local on this node, so containers reach
//! VIPs as host processes do.
//!
//! A VIP outside 127.0.0.0/8 is made local with one AnyIP route, as
//! `ip route add local RANGE dev lo` does (through netlink, `rtnetlink`):
//! every address of the range is then this host's, lbd binds VIPs without
//! configuring each one, and a packet a container sends to a VIP (routed to
//! the host through its bridge gateway) is delivered to lbd's socket
//! instead of being forwarded. A range inside 127.0.0.0/8 is local already
//! (but a container cannot reach it), so it needs no route.
//!
//! ```text
//! start:  range in 127/8 ─> nothing to do
//!         add `local RANGE dev lo` (table local) ─ added ─> owned: removed at stop
//!                                                 ├ exists ─> someone else's (another lbd
//!                                                 │           on this machine): left alone
//!                                                 └ refused (no CAP_NET_ADMIN) ─> a warning
//!                                                   naming the command to run by hand
//! every KEEP_EVERY: add again (so a node sharing the machine takes over the route when the
//!         lbd that added it stops)
//! stop:   delete the route if this lbd added it
//! ```
//!
//! On a node without the route (lbd lacks CAP_NET_ADMIN and nobody added
//! it), VIPs cannot be bound: the proxy keeps retrying them, as it does
//! for any address it cannot bind, and the warning says why.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures_util::TryStreamExt;
use raft_state::state::VipRange;
use rtnetlink::packet_route::route::{RouteMessage, RouteScope, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the route is checked: a node that shares the machine with
/// the lbd that added it takes it over within this time when that one
/// stops.
pub const KEEP_EVERY: Duration = Duration::from_secs(2);

/// The kernel's local routing table, where `ip route add local` puts a
/// route of type local.
const TABLE_LOCAL: u32 = 255;

const EEXIST: i32 = 17;

/// What adding the route did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Added {
    /// This call added it.
    Now,
    /// It was there already.
    Before,
}

/// Whether `range` is local without a route (inside 127.0.0.0/8).
pub fn is_loopback(range: VipRange) -> bool {
    range.base.is_loopback() && range.prefix_len >= 8
}

/// The route's message: `local RANGE dev lo table local scope host`.
fn local_route(range: VipRange, loopback_index: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(range.base, range.prefix_len)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(TABLE_LOCAL)
        .output_interface(loopback_index)
        .build()
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

/// Adds the route; `Err` says why it could not.
async fn add(handle: &Handle, route: RouteMessage) -> Result<Added, rtnetlink::Error> {
    match handle.route().add(route).execute().await {
        Ok(()) => Ok(Added::Now),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -EEXIST => Ok(Added::Before),
        Err(e) => Err(e),
    }
}

/// The route of one range, kept by [`RouteKeeper::run`].
pub struct RouteKeeper {
    range: VipRange,
    handle: Handle,
    route: RouteMessage,
    /// Whether this lbd added the route (and so removes it at stop).
    owned: bool,
    /// Whether the last try failed (warned once until it succeeds).
    failing: bool,
}

impl RouteKeeper {
    /// Makes `range` local now (so the first VIP binds succeed); `None`
    /// for a loopback range or when netlink is out of reach (warned).
    pub async fn start(range: VipRange) -> Option<Self> {
        if is_loopback(range) {
            return None;
        }
        let handle = match rtnetlink::new_connection() {
            Ok((connection, handle, _)) => {
                tokio::spawn(connection);
                handle
            }
            Err(error) => {
                warn!(%range, %error, "no netlink socket: VIPs are not reachable until `ip route add local {range} dev lo` is run");
                return None;
            }
        };
        let index = match loopback_index(&handle).await {
            Ok(index) => index,
            Err(error) => {
                warn!(%range, %error, "VIPs are not reachable until `ip route add local {range} dev lo` is run");
                return None;
            }
        };
        let mut keeper = Self {
            range,
            route: local_route(range, index),
            handle,
            owned: false,
            failing: false,
        };
        keeper.ensure().await;
        Some(keeper)
    }

    /// Adds the route if it is missing.
    async fn ensure(&mut self) {
        let range = self.range;
        match add(&self.handle, self.route.clone()).await {
            Ok(Added::Now) => {
                info!(%range, "VIP range made local (ip route add local {range} dev lo)");
                self.owned = true;
                self.failing = false;
            }
            Ok(Added::Before) => self.failing = false,
            Err(error) if !self.failing => {
                warn!(
                    %range, %error,
                    "cannot make the VIP range local (lbd needs CAP_NET_ADMIN): VIPs are not \
                     reachable until `ip route add local {range} dev lo` is run"
                );
                self.failing = true;
            }
            Err(_) => {}
        }
    }

    /// Keeps the route until `stop`, then removes it if this lbd added it.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_EVERY, KEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => self.ensure().await,
                () = stop.cancelled() => break,
            }
        }
        if self.owned {
            let range = self.range;
            match self.handle.route().del(self.route).execute().await {
                Ok(()) => info!(%range, "VIP range route removed"),
                Err(error) => warn!(%range, %error, "cannot remove the VIP range route"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ranges_inside_loopback_need_no_route() {
        let parse = |text| VipRange::parse(text).expect("range");
        assert!(is_loopback(parse("127.77.0.0/16")));
        assert!(!is_loopback(parse("198.18.0.0/16")));
        assert!(!is_loopback(parse("10.0.0.0/8")));
    }
}
