//! Placement constraints: `node.<attribute> (==|!=) value`, parsed from a
//! service's `constraints` and matched against a node by the scheduler.
//!
//! [`Constraint::parse`] refuses an unknown attribute, a missing value and a
//! role other than `manager` or `worker`; its error is a message that
//! `validate` reports under the constraint's field. [`Constraint`]'s
//! `Display` writes the text `parse` reads.

use std::collections::BTreeMap;
use std::fmt;

/// One placement constraint: `node.<attribute> (==|!=) value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub attribute: NodeAttribute,
    pub equal: bool,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttribute {
    Name,
    Id,
    Role,
    Label(String),
}

/// What a constraint is matched against.
pub struct NodeFacts<'a> {
    pub name: &'a str,
    pub id: u64,
    pub role: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Constraint {
    /// Parses `node.name==x`, `node.id!=7`, `node.role==manager`,
    /// `node.labels.zone==a`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, equal, value) = if let Some((k, v)) = text.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = text.split_once("!=") {
            (k, false, v)
        } else {
            return Err(format!(
                "{text:?} is not KEY==VALUE or KEY!=VALUE (e.g. node.labels.zone==a)"
            ));
        };
        let key = key.trim();
        let value = value.trim();
        let attribute = match key {
            "node.name" | "node.hostname" => NodeAttribute::Name,
            "node.id" => NodeAttribute::Id,
            "node.role" => NodeAttribute::Role,
            _ => match key.strip_prefix("node.labels.") {
                Some(label) if !label.is_empty() => NodeAttribute::Label(label.to_owned()),
                _ => {
                    return Err(format!(
                        "unknown constraint key {key:?}; use node.name, node.id, node.role or node.labels.KEY"
                    ))
                }
            },
        };
        if value.is_empty() {
            return Err(format!("{text:?} has no value to compare with"));
        }
        if attribute == NodeAttribute::Role && !matches!(value, "manager" | "worker") {
            return Err(format!("node.role is manager or worker, not {value:?}"));
        }
        Ok(Self {
            attribute,
            equal,
            value: value.to_owned(),
        })
    }

    /// Whether `node` meets the constraint (the scheduler asks once per node
    /// and task to place, so only `node.id` formats anything).
    pub fn matches(&self, node: &NodeFacts<'_>) -> bool {
        let equal = match &self.attribute {
            NodeAttribute::Name => node.name == self.value,
            NodeAttribute::Id => node.id.to_string() == self.value,
            NodeAttribute::Role => node.role == self.value,
            NodeAttribute::Label(key) => node.labels.get(key) == Some(&self.value),
        };
        equal == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.attribute {
            NodeAttribute::Name => "node.name".to_owned(),
            NodeAttribute::Id => "node.id".to_owned(),
            NodeAttribute::Role => "node.role".to_owned(),
            NodeAttribute::Label(label) => format!("node.labels.{label}"),
        };
        let op = if self.equal { "==" } else { "!=" };
        write!(f, "{key}{op}{}", self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_parse_and_match() {
        let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        let node = NodeFacts {
            name: "n1",
            id: 7,
            role: "worker",
            labels: &labels,
        };
        for (text, expected) in [
            ("node.name==n1", true),
            ("node.name!=n1", false),
            ("node.labels.zone==a", true),
            ("node.labels.zone!=b", true),
            ("node.labels.rack==r1", false),
            ("node.labels.rack!=r1", true),
            ("node.role==manager", false),
            ("node.id==7", true),
        ] {
            let constraint = Constraint::parse(text).unwrap();
            assert_eq!(constraint.matches(&node), expected, "{text}");
            assert_eq!(constraint.to_string(), text);
        }
        for bad in [
            "node.name",
            "node.colour==red",
            "node.role==boss",
            "node.labels.==x",
            "node.name==",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
    }
}
