//! `--filter KEY=VALUE` as docker spells it: each verb names the keys it
//! takes; the same key given twice matches either value, different keys
//! must all match. A key the verb does not take, or a value outside a
//! fixed set, is an error before anything is sent.

use std::collections::BTreeMap;

use crate::error::CtlError;
use crate::parse::Filter;

/// The filters of one command, grouped by key.
#[derive(Debug, Default)]
pub struct Filters {
    by_key: BTreeMap<String, Vec<String>>,
}

/// A key a verb takes and, for a key with a fixed set of values, that set.
pub struct Key {
    pub name: &'static str,
    pub values: Option<&'static [&'static str]>,
}

impl Key {
    /// A key that takes any value.
    const fn any(name: &'static str) -> Self {
        Self { name, values: None }
    }

    /// A key that takes one of `values`.
    const fn one_of(name: &'static str, values: &'static [&'static str]) -> Self {
        Self {
            name,
            values: Some(values),
        }
    }
}

/// Keys of `service ls`.
pub const SERVICE_LS: &[Key] = &[
    Key::any("id"),
    Key::any("name"),
    Key::one_of("mode", &["replicated", "global"]),
];

/// Keys of `service ps` and `node ps`.
pub const TASK_PS: &[Key] = &[
    Key::any("id"),
    Key::any("name"),
    Key::any("node"),
    Key::one_of("desired-state", &["running", "shutdown"]),
];

/// Keys of `node ls` (`node.label` is docker's spelling of `label` here).
pub const NODE_LS: &[Key] = &[
    Key::any("id"),
    Key::any("name"),
    Key::any("label"),
    Key::any("node.label"),
    Key::one_of("role", &["manager", "worker"]),
];

impl Filters {
    /// Checks `filters` against the keys a verb takes.
    pub fn new(filters: &[Filter], keys: &[Key]) -> Result<Self, CtlError> {
        let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for filter in filters {
            let Some(key) = keys.iter().find(|k| k.name == filter.key) else {
                let names: Vec<&str> = keys.iter().map(|k| k.name).collect();
                return Err(CtlError::Filter(format!(
                    "{:?} is not a filter here; use {}",
                    filter.key,
                    names.join(", ")
                )));
            };
            if let Some(values) = key.values {
                if !values.contains(&filter.value.as_str()) {
                    return Err(CtlError::Filter(format!(
                        "{}={:?}: the value must be one of {}",
                        filter.key,
                        filter.value,
                        values.join(", ")
                    )));
                }
            }
            // `node.label` and `label` are one key.
            let name = if key.name == "node.label" {
                "label"
            } else {
                key.name
            };
            by_key
                .entry(name.to_owned())
                .or_default()
                .push(filter.value.clone());
        }
        Ok(Self { by_key })
    }

    /// Whether a row passes the filters of `key`: true when none was
    /// given, else when `matches` holds for one of the values.
    pub fn keep(&self, key: &str, matches: impl Fn(&str) -> bool) -> bool {
        self.by_key
            .get(key)
            .is_none_or(|values| values.iter().any(|value| matches(value)))
    }
}

/// docker's label filter: `KEY` (the label is set) or `KEY=VALUE`.
pub fn label_matches(labels: &BTreeMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|v| v == value),
        None => labels.contains_key(filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_filter;

    fn filters(texts: &[&str], keys: &[Key]) -> Result<Filters, CtlError> {
        let parsed: Vec<Filter> = texts.iter().map(|t| parse_filter(t).unwrap()).collect();
        Filters::new(&parsed, keys)
    }

    #[test]
    fn same_key_ors_and_different_keys_and() {
        let f = filters(&["name=web", "name=api", "mode=global"], SERVICE_LS).unwrap();
        let row = |name: &str, mode: &str| {
            f.keep("name", |v| name.starts_with(v)) && f.keep("mode", |v| v == mode)
        };
        assert!(row("web", "global"));
        assert!(row("api-2", "global"));
        assert!(!row("db", "global"));
        assert!(!row("web", "replicated"));
        assert!(filters(&[], SERVICE_LS).unwrap().keep("name", |_| false));
    }

    #[test]
    fn unknown_keys_and_values_are_refused() {
        let err = filters(&["colour=red"], SERVICE_LS)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "filter: \"colour\" is not a filter here; use id, name, mode"
        );
        let err = filters(&["desired-state=asleep"], TASK_PS)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "filter: desired-state=\"asleep\": the value must be one of running, shutdown"
        );
    }

    #[test]
    fn labels_match_by_key_or_pair_under_both_spellings() {
        let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        assert!(label_matches(&labels, "zone"));
        assert!(label_matches(&labels, "zone=a"));
        assert!(!label_matches(&labels, "zone=b"));
        assert!(!label_matches(&labels, "disk"));
        let f = filters(&["node.label=zone=b", "label=zone=a"], NODE_LS).unwrap();
        assert!(f.keep("label", |v| label_matches(&labels, v)));
    }
}
