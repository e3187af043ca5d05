//! The per-(cid, port) policy table.

use std::collections::HashMap;

use crate::proto::control::{PolicyAction, PolicyRule};

/// Most rules a table holds (advertised in `PolicyCapability::max_rules`).
pub const MAX_RULES: usize = 4096;

/// Rules keyed by (guest_cid or any, host_port or any). The most specific match wins:
/// (cid, port) > (any, port) > (cid, any) > (any, any). No match = allow.
///
/// Rules are indexed by key, so applying n rules and each lookup cost O(1) per rule (F5: a linear
/// search per rule made a large request quadratic).
#[derive(Debug, Default, Clone)]
pub struct PolicyTable {
    rules: Vec<PolicyRule>,
    /// key → position in `rules`.
    index: HashMap<Key, usize>,
}

type Key = (Option<u64>, Option<u32>);

fn key(r: &PolicyRule) -> Key {
    (r.guest_cid, r.host_port)
}

impl PolicyTable {
    /// Add or replace rules (same key = replaced); `replace_all` drops every rule first.
    /// Fails without changing anything if the table would exceed [`MAX_RULES`].
    pub fn apply(&mut self, rules: &[PolicyRule], replace_all: bool) -> Result<(), String> {
        let mut next = if replace_all {
            PolicyTable::default()
        } else {
            self.clone()
        };
        for r in rules {
            match next.index.get(&key(r)) {
                Some(&i) => next.rules[i] = r.clone(),
                None => {
                    if next.rules.len() == MAX_RULES {
                        return Err(format!(
                            "policy would hold more than {MAX_RULES} rules; at most {MAX_RULES}"
                        ));
                    }
                    next.index.insert(key(r), next.rules.len());
                    next.rules.push(r.clone());
                }
            }
        }
        *self = next;
        Ok(())
    }

    /// The rule deciding a guest `cid` connecting to `port`, if any.
    pub fn lookup(&self, cid: u64, port: u32) -> Option<&PolicyRule> {
        [
            (Some(cid), Some(port)),
            (None, Some(port)),
            (Some(cid), None),
            (None, None),
        ]
        .into_iter()
        .find_map(|k| self.index.get(&k).and_then(|&i| self.rules.get(i)))
    }

    /// `Some(reason)` if the connection is denied.
    pub fn denies(&self, cid: u64, port: u32) -> Option<String> {
        let r = self.lookup(cid, port)?;
        match r.action.enum_value_or_default() {
            PolicyAction::POLICY_ACTION_DENY => Some(if r.reason.is_empty() {
                format!("denied by policy for cid {cid} port {port}")
            } else {
                r.reason.clone()
            }),
            // UNSPECIFIED = ALLOW (the old behaviour); unknown values are refused at set time.
            _ => None,
        }
    }

    /// All rules, in insertion order.
    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cid: Option<u64>, port: Option<u32>, deny: bool, reason: &str) -> PolicyRule {
        PolicyRule {
            guest_cid: cid,
            host_port: port,
            action: if deny {
                PolicyAction::POLICY_ACTION_DENY
            } else {
                PolicyAction::POLICY_ACTION_ALLOW
            }
            .into(),
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn most_specific_rule_wins() {
        let mut t = PolicyTable::default();
        t.apply(
            &[
                rule(None, None, true, "all"),
                rule(Some(3), None, false, "cid3"),
                rule(None, Some(22), true, "ssh"),
                rule(Some(3), Some(22), false, "cid3 ssh"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(t.lookup(3, 22).unwrap().reason, "cid3 ssh");
        assert_eq!(t.lookup(4, 22).unwrap().reason, "ssh");
        assert_eq!(t.lookup(3, 80).unwrap().reason, "cid3");
        assert_eq!(t.lookup(4, 80).unwrap().reason, "all");
        assert_eq!(t.denies(3, 22), None);
        assert_eq!(t.denies(4, 22).as_deref(), Some("ssh"));
        assert_eq!(t.denies(3, 80), None);
        assert_eq!(t.denies(4, 80).as_deref(), Some("all"));
    }

    #[test]
    fn unspecified_action_allows_and_same_key_replaces() {
        let mut t = PolicyTable::default();
        let mut r = rule(Some(3), Some(1), true, "");
        t.apply(std::slice::from_ref(&r), false).unwrap();
        assert_eq!(
            t.denies(3, 1).as_deref(),
            Some("denied by policy for cid 3 port 1")
        );
        r.action = PolicyAction::POLICY_ACTION_UNSPECIFIED.into();
        t.apply(&[r], false).unwrap();
        assert_eq!(t.rules().len(), 1);
        assert_eq!(t.denies(3, 1), None);
        t.apply(&[], true).unwrap();
        assert!(t.rules().is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let mut t = PolicyTable::default();
        let rules: Vec<PolicyRule> = (0..=MAX_RULES as u32)
            .map(|p| rule(None, Some(p), true, ""))
            .collect();
        assert_eq!(
            t.apply(&rules, false),
            Err(format!(
                "policy would hold more than {MAX_RULES} rules; at most {MAX_RULES}"
            ))
        );
        assert!(t.rules().is_empty());
    }
}
