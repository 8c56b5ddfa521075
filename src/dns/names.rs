//! The names the responder answers for, built from the registry.
//!
//! For each service `S` with VIP `V` in cluster domain `D`:
//!
//! - `S` and `S.D` give `V`;
//! - a service of stack `K` (labelled [`STACK_LABEL`]`=K` and named
//!   `K-N`, as `lbctl stack deploy` names them) also gives `V` for
//!   `N.K.D`: a container of the stack has `K.D` as its search domain, so
//!   its resolver turns the compose name `N` into `N.K.D`.
//!
//! Any other name under `D` does not exist (NXDOMAIN); a name outside `D`
//! that is not a service's is someone else's (forwarded upstream).
//! [`Names`] is immutable: a registry change makes a new one from the last
//! (`Names::updated`, which names again only the services that changed)
//! and the responder swaps it in whole.

use std::net::IpAddr;
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use lb_config::STACK_LABEL;
use raft_state::state::{RegistryState, ServiceRecord};

/// What a name is to this responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A service's name: its addresses.
    Service(&'a [IpAddr]),
    /// Under the cluster domain, and no service's: NXDOMAIN.
    NoSuchName,
    /// Not the cluster's to answer: forwarded upstream.
    Elsewhere,
}

/// Every name the cluster answers for, lower case without the final dot.
/// The map is persistent: a new `Names` shares all but what changed.
#[derive(Debug, Default, PartialEq)]
pub struct Names {
    /// The cluster domain (`lbmesh.internal`), lower case.
    domain: String,
    by_name: imbl::HashMap<String, Vec<IpAddr>>,
}

impl Names {
    /// The names of `state`'s services under `domain`.
    pub fn of(state: &RegistryState, domain: &str) -> Self {
        let mut names = Self {
            domain: normalize(domain),
            by_name: imbl::HashMap::new(),
        };
        for (name, record) in &state.services {
            names.add(name, record);
        }
        names
    }

    /// The names of `new`, from these names of `old`: only the services
    /// the two states do not share are named again, so a change costs
    /// what it touched, not the cluster's size.
    pub fn updated(&self, old: &RegistryState, new: &RegistryState) -> Self {
        if old.dns_domain() != new.dns_domain() {
            return Self::of(new, new.dns_domain());
        }
        let mut names = Self {
            domain: self.domain.clone(),
            by_name: self.by_name.clone(),
        };
        for item in old.services.diff(&new.services) {
            match item {
                DiffItem::Add(name, record) => names.add(name, record),
                DiffItem::Remove(name, record) => names.remove(name, record),
                DiffItem::Update {
                    old: (name, was),
                    new: (_, is),
                } => {
                    names.remove(name, was);
                    names.add(name, is);
                }
            }
        }
        names
    }

    fn add(&mut self, name: &str, record: &ServiceRecord) {
        let addrs: Vec<IpAddr> = std::iter::once(IpAddr::V4(record.vip))
            .chain(record.vip_v6.map(IpAddr::V6))
            .collect();
        for each in names_of(name, record, &self.domain) {
            self.by_name.insert(each, addrs.clone());
        }
    }

    fn remove(&mut self, name: &str, record: &ServiceRecord) {
        for each in names_of(name, record, &self.domain) {
            self.by_name.remove(&each);
        }
    }

    /// The cluster domain, lower case.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// What `name` (any case, with or without the final dot) is.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = normalize(name);
        if let Some(addrs) = self.by_name.get(&name) {
            return Lookup::Service(addrs);
        }
        let under_domain = name == self.domain
            || name
                .strip_suffix(self.domain.as_str())
                .is_some_and(|head| head.ends_with('.'));
        if under_domain {
            Lookup::NoSuchName
        } else {
            Lookup::Elsewhere
        }
    }
}

/// Keeps [`Names`] in step with the registry's applied states.
///
/// Each state is compared with the one before it, whether or not that one
/// changed a name: states next to each other share all but the changed
/// services' paths, so the comparison walks those only. (Compared with the
/// state last *named*, every service changed since, endpoints and scales
/// included, is walked again at every change, up to the whole registry.)
#[derive(Default)]
pub struct NamesKeeper {
    seen: Option<Arc<RegistryState>>,
}

impl NamesKeeper {
    /// The names of `state`, made from `current` (the names of the state
    /// seen last), or `None` when they are the same.
    pub fn next(&mut self, current: &Names, state: &Arc<RegistryState>) -> Option<Names> {
        let next = match &self.seen {
            Some(old) if same_names(old, state) => None,
            Some(old) => Some(current.updated(old, state)),
            None => Some(Names::of(state, state.dns_domain())),
        };
        self.seen = Some(Arc::clone(state));
        next
    }
}

/// Whether `old` and `new` give the same names: the same domain, and the
/// same services with the same VIPs and stacks. Most registry changes
/// (task reports, node heartbeats' effects, scaling) leave them alone, and
/// this comparison walks only the services the two states do not share
/// (see `raft_state::state`), where [`Names::of`] builds every name again.
fn same_names(old: &RegistryState, new: &RegistryState) -> bool {
    old.dns_domain() == new.dns_domain()
        && old.services.diff(&new.services).all(|item| match item {
            DiffItem::Add(..) | DiffItem::Remove(..) => false,
            DiffItem::Update {
                old: (_, old),
                new: (_, new),
            } => {
                old.vip == new.vip
                    && old.vip_v6 == new.vip_v6
                    && old.spec.labels.get(STACK_LABEL) == new.spec.labels.get(STACK_LABEL)
            }
        })
}

/// The names of service `name` under `domain`: `S`, `S.D` and, for a
/// stack's service `K-N`, `N.K.D`. Service names are unique DNS labels,
/// so no two services share one.
fn names_of(name: &str, record: &ServiceRecord, domain: &str) -> Vec<String> {
    let name = normalize(name);
    let mut names = Vec::with_capacity(3);
    if let Some(stack) = record.spec.labels.get(STACK_LABEL) {
        let stack = normalize(stack);
        if let Some(short) = name
            .strip_prefix(stack.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .filter(|short| !short.is_empty())
        {
            names.push(format!("{short}.{stack}.{domain}"));
        }
    }
    names.push(format!("{name}.{domain}"));
    names.push(name);
    names
}

/// Lower case, without the final dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use lb_config::ServiceSpec;
    use raft_state::state::ServiceRecord;

    /// A record as the registry stores it (JSON, so fields added later
    /// take their defaults).
    pub(crate) fn record(vip: [u8; 4], stack: Option<&str>) -> ServiceRecord {
        let mut spec = ServiceSpec::default();
        if let Some(stack) = stack {
            spec.labels.insert(STACK_LABEL.to_owned(), stack.to_owned());
        }
        let vip = Ipv4Addr::from(vip);
        serde_json::from_value(serde_json::json!({"spec": spec, "version": 1, "vip": vip}))
            .expect("record")
    }

    #[test]
    fn a_service_with_a_v6_vip_has_both_addresses() {
        let mut state = RegistryState::default();
        let mut web = record([198, 18, 0, 3], Some("app"));
        web.vip_v6 = Some("fd77::3".parse().expect("v6"));
        state.services.insert("app-web".to_owned(), web);
        let names = Names::of(&state, "lbmesh.internal");
        let both = [
            IpAddr::from([198, 18, 0, 3]),
            "fd77::3".parse::<IpAddr>().expect("v6"),
        ];
        assert_eq!(
            names.lookup("web.app.lbmesh.internal"),
            Lookup::Service(&both)
        );
        assert_eq!(names.lookup("app-web"), Lookup::Service(&both));
    }

    #[test]
    fn only_names_vips_stacks_and_the_domain_make_new_names() {
        let mut old = RegistryState::default();
        old.services
            .insert("app-redis".to_owned(), record([198, 18, 0, 2], Some("app")));
        let mut new = old.clone();
        new.services
            .get_mut("app-redis")
            .expect("redis")
            .spec
            .replicas = Some(5);
        assert!(same_names(&old, &new), "a scale changes no name");
        let changes: [fn(&mut RegistryState); 5] = [
            // A joiner's first applied InitCluster may bring no service.
            |state| state.dns_domain = Some("corp.test".to_owned()),
            |state| {
                state.services.get_mut("app-redis").expect("redis").vip = [198, 18, 0, 9].into()
            },
            |state| {
                let redis = state.services.get_mut("app-redis").expect("redis");
                redis.vip_v6 = Some("fd77::2".parse().expect("v6"));
            },
            |state| {
                let redis = state.services.get_mut("app-redis").expect("redis");
                redis.spec.labels.clear();
            },
            |state| {
                let redis = state.services.remove("app-redis").expect("redis");
                state.services.insert("app-cache".to_owned(), redis);
            },
        ];
        for (n, change) in changes.iter().enumerate() {
            let mut changed = old.clone();
            change(&mut changed);
            assert!(!same_names(&old, &changed), "change {n}");
        }
    }

    #[test]
    fn updated_names_are_the_names_of_the_new_state() {
        let mut old = RegistryState::default();
        for n in 0..200u8 {
            let stack = (n % 3 == 0).then_some("app");
            let name = format!("{}s{n}", if stack.is_some() { "app-" } else { "" });
            old.services.insert(name, record([198, 18, 0, n], stack));
        }
        let names = Names::of(&old, old.dns_domain());
        // Each applied state is a changed clone of the last, as the
        // registry's are: the diff sees only what changed.
        let mut new = old.clone();
        new.services.remove("app-s0");
        new.services.remove("s1");
        new.services
            .insert("app-new".to_owned(), record([198, 18, 1, 1], Some("app")));
        new.services.get_mut("s2").expect("s2").vip = [198, 18, 1, 2].into();
        new.services
            .get_mut("app-s3")
            .expect("s3")
            .spec
            .labels
            .clear();
        let updated = names.updated(&old, &new);
        assert_eq!(updated, Names::of(&new, new.dns_domain()));
        assert_eq!(updated.lookup("s0.app.lbmesh.internal"), Lookup::NoSuchName);
        assert_eq!(updated.lookup("s3.app.lbmesh.internal"), Lookup::NoSuchName);
        let new_vip = [IpAddr::from([198, 18, 1, 1])];
        assert_eq!(updated.lookup("new.app"), Lookup::Elsewhere);
        assert_eq!(updated.lookup("app-new"), Lookup::Service(&new_vip));
        // Another domain names everything again.
        let mut renamed = new.clone();
        renamed.dns_domain = Some("corp.test".to_owned());
        let again = updated.updated(&new, &renamed);
        assert_eq!(again, Names::of(&renamed, "corp.test"));
        assert_eq!(again.domain(), "corp.test");
    }

    #[test]
    fn the_keeper_compares_each_state_with_the_one_before() {
        let mut first = RegistryState::default();
        for n in 0..100u8 {
            first
                .services
                .insert(format!("s{n}"), record([198, 18, 0, n], None));
        }
        let first = Arc::new(first);
        let mut keeper = NamesKeeper::default();
        let mut names = keeper.next(&Names::default(), &first).expect("first names");
        let mut last = Arc::clone(&first);
        // Scales change no name; a VIP change in between does.
        for step in 0..40u8 {
            let mut state = (*last).clone();
            let service = state.services.get_mut("s7").expect("s7");
            if step % 10 == 9 {
                service.vip = [198, 18, 1, step].into();
            } else {
                service.spec.replicas = Some(i64::from(step));
            }
            let state = Arc::new(state);
            let next = keeper.next(&names, &state);
            assert_eq!(next.is_some(), step % 10 == 9, "step {step}");
            if let Some(next) = next {
                names = next;
            }
            assert_eq!(names, Names::of(&state, state.dns_domain()), "step {step}");
            let seen = keeper.seen.as_ref().expect("a state seen");
            assert!(
                Arc::ptr_eq(seen, &state),
                "step {step} compared with an older state"
            );
            last = state;
        }
    }

    #[test]
    fn services_stacks_and_the_domain() {
        let mut state = RegistryState::default();
        state
            .services
            .insert("db".to_owned(), record([198, 18, 0, 1], None));
        state
            .services
            .insert("app-redis".to_owned(), record([198, 18, 0, 2], Some("app")));
        let names = Names::of(&state, "LBmesh.Internal.");
        let db = [IpAddr::from([198, 18, 0, 1])];
        let redis = [IpAddr::from([198, 18, 0, 2])];
        assert_eq!(names.lookup("db"), Lookup::Service(&db));
        assert_eq!(names.lookup("DB.lbmesh.internal."), Lookup::Service(&db));
        assert_eq!(names.lookup("app-redis"), Lookup::Service(&redis));
        assert_eq!(
            names.lookup("redis.app.lbmesh.internal"),
            Lookup::Service(&redis)
        );
        assert_eq!(names.lookup("redis.lbmesh.internal"), Lookup::NoSuchName);
        assert_eq!(names.lookup("lbmesh.internal"), Lookup::NoSuchName);
        assert_eq!(names.lookup("redis"), Lookup::Elsewhere);
        assert_eq!(names.lookup("notlbmesh.internal"), Lookup::Elsewhere);
        assert_eq!(names.lookup("example.com"), Lookup::Elsewhere);
    }
}
