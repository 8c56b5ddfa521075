//! What a create or an update checks against every other service, kept as
//! the services change instead of gathered from all of them on each
//! command: the VIPs in use and the owner of each published port.
//!
//! It is derived from [`RegistryState::services`] alone, so it is neither
//! stored nor replicated: a state read from disk or installed from a
//! snapshot has none, and the first command that needs it builds it from
//! the services (once, O(services)); from then on `apply` changes it with
//! the services it adds, updates and removes (O(log services) each). Its
//! answers are the ones a scan of every service gives (the lowest free
//! host of the range, the port's one owner), so every node reaches the same
//! state whether its index was built early or late.
//!
//! [`RegistryState::services`]: super::RegistryState::services

use std::net::{Ipv4Addr, Ipv6Addr};

use imbl::{OrdMap, OrdSet};
use lb_config::{PortSpec, ServiceSpec};

use crate::cluster::{VipRange, VipRangeV6};
use crate::service::ServiceRecord;

/// A published port as the mesh owns it: the number and whether it is udp
/// (one service's 53/udp and another's 53/tcp do not clash).
pub(super) type PortKey = (i64, bool);

/// The key of a published port, `None` for a VIP-only one. Every spec
/// stored before UDP ports names tcp (or nothing), so entries written
/// before key as they did.
pub(super) fn port_key(port: &PortSpec) -> Option<PortKey> {
    port.is_published()
        .then(|| (port.published, port.protocol.as_deref() == Some("udp")))
}

/// The index; see the module doc.
#[derive(Debug, Clone)]
pub(super) struct Taken {
    vips: OrdSet<Ipv4Addr>,
    vips_v6: OrdSet<Ipv6Addr>,
    /// Every host of the v4 range below it is taken, so the search for the
    /// lowest free one starts here; it only rises past hosts it has seen
    /// taken and falls back to a VIP when the VIP is given up.
    vip_floor: Ipv4Addr,
    vip_floor_v6: Ipv6Addr,
    ports: OrdMap<PortKey, String>,
}

impl Taken {
    /// The index of `services`, built by one pass over them.
    pub(super) fn of(services: &OrdMap<String, ServiceRecord>) -> Self {
        let mut taken = Self {
            vips: OrdSet::new(),
            vips_v6: OrdSet::new(),
            vip_floor: Ipv4Addr::UNSPECIFIED,
            vip_floor_v6: Ipv6Addr::UNSPECIFIED,
            ports: OrdMap::new(),
        };
        for record in services.values() {
            taken.add(record);
        }
        taken
    }

    /// The lowest host of `range` no service holds; the search for the
    /// next one starts from it.
    pub(super) fn lowest_free_vip(&mut self, range: VipRange) -> Option<Ipv4Addr> {
        let free = range
            .hosts_from(self.vip_floor)
            .find(|ip| !self.vips.contains(ip))?;
        self.vip_floor = free;
        Some(free)
    }

    /// As [`Taken::lowest_free_vip`], in the v6 range.
    pub(super) fn lowest_free_vip_v6(&mut self, range: VipRangeV6) -> Option<Ipv6Addr> {
        let free = range
            .hosts_from(self.vip_floor_v6)
            .find(|ip| !self.vips_v6.contains(ip))?;
        self.vip_floor_v6 = free;
        Some(free)
    }

    /// The service that publishes `key`, if any.
    pub(super) fn owner(&self, key: PortKey) -> Option<&str> {
        self.ports.get(&key).map(String::as_str)
    }

    /// Records a service just stored.
    pub(super) fn add(&mut self, record: &ServiceRecord) {
        self.vips.insert(record.vip);
        if let Some(vip) = record.vip_v6 {
            self.vips_v6.insert(vip);
        }
        self.publish(&record.spec);
    }

    /// Forgets a service just removed: its VIPs are free again and its
    /// ports unowned.
    pub(super) fn remove(&mut self, record: &ServiceRecord) {
        self.vips.remove(&record.vip);
        self.vip_floor = self.vip_floor.min(record.vip);
        if let Some(vip) = record.vip_v6 {
            self.vips_v6.remove(&vip);
            self.vip_floor_v6 = self.vip_floor_v6.min(vip);
        }
        self.unpublish(&record.spec);
    }

    /// A service's spec changed from `old` to `new` (its VIPs stay).
    pub(super) fn respec(&mut self, old: &ServiceSpec, new: &ServiceSpec) {
        self.unpublish(old);
        self.publish(new);
    }

    fn publish(&mut self, spec: &ServiceSpec) {
        for key in spec.ports.iter().filter_map(port_key) {
            self.ports.insert(key, spec.name.clone());
        }
    }

    fn unpublish(&mut self, spec: &ServiceSpec) {
        for key in spec.ports.iter().filter_map(port_key) {
            if self.owner(key) == Some(spec.name.as_str()) {
                self.ports.remove(&key);
            }
        }
    }
}

/// The index's place in the state: empty until first needed (see the
/// module doc). Two states with the same services have the same index
/// whenever each is built, so it takes no part in comparing states.
#[derive(Debug, Clone, Default)]
pub(super) struct TakenCell(Option<Taken>);

impl TakenCell {
    /// The index, built from `services` if this state has none yet.
    pub(super) fn get(&mut self, services: &OrdMap<String, ServiceRecord>) -> &mut Taken {
        self.0.get_or_insert_with(|| Taken::of(services))
    }

    /// Drops the index (it is built again when next needed): for a change
    /// it does not follow, such as a new VIP range.
    pub(super) fn reset(&mut self) {
        self.0 = None;
    }

    /// The index if built; a change with none to keep up needs no work.
    pub(super) fn built(&mut self) -> Option<&mut Taken> {
        self.0.as_mut()
    }
}

impl PartialEq for TakenCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
