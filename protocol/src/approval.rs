//! Workspace approval policies: tools (built-in, MCP or custom, by name or
//! `*` pattern) that every agent of a workspace must ask before using,
//! whatever the agent's own policy says, and who may answer.
//!
//! A policy is metadata-group state with a version that goes up with every
//! change. The brain evaluates it when the model asks for a tool and records
//! the outcome (an [`ApprovalGate`]) in the tool use event itself, so the
//! plan stays a function of the log and the state machine can check the
//! answer against the gate that applied, on every replica.

use serde::{Deserialize, Serialize};

use crate::ids::ApiKeyId;
use crate::tenancy::Role;
use crate::{limits, ApiError};

/// A workspace's approval policy; version 0 is the empty policy every
/// workspace starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    pub workspace: String,
    pub version: u64,
    pub rules: Vec<ApprovalRule>,
    pub updated_at_ms: u64,
}

/// Tools whose use needs a confirmation, and whether only a key with the
/// `approver` role may give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRule {
    /// A tool name as the model sees it (`bash`, `mcp__docs__search`, a
    /// custom tool's name), where `*` matches any run of characters.
    pub tools: String,
    pub approver_only: bool,
}

/// What a workspace policy decided about one tool use: recorded in the
/// event, checked by the state machine against the confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalGate {
    pub policy_version: u64,
    /// The rule's pattern that matched.
    pub rule: String,
    pub approver_only: bool,
}

/// Who answered a tool use: the key, by id and name, and its role then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decider {
    pub key_id: ApiKeyId,
    pub key_name: String,
    pub role: Role,
}

impl ApprovalPolicy {
    /// The empty policy of `workspace`.
    pub fn empty(workspace: &str) -> ApprovalPolicy {
        ApprovalPolicy { workspace: workspace.to_string(), version: 0, rules: Vec::new(), updated_at_ms: 0 }
    }

    /// The gate for a tool the model calls `tool_name`: the first rule that
    /// matches it, preferring one that needs an approver.
    pub fn gate(&self, tool_name: &str) -> Option<ApprovalGate> {
        let mut matching = self.rules.iter().filter(|rule| matches_pattern(&rule.tools, tool_name));
        let first = matching.clone().next()?;
        let rule = matching.find(|rule| rule.approver_only).unwrap_or(first);
        Some(ApprovalGate { policy_version: self.version, rule: rule.tools.clone(), approver_only: rule.approver_only })
    }

    /// Checks the rules' number and patterns.
    pub fn validate_rules(rules: &[ApprovalRule]) -> Result<(), ApiError> {
        let invalid = |message: String| Err(ApiError::InvalidRequest { message });
        if rules.len() > limits::APPROVAL_RULES_MAX {
            return invalid(format!("an approval policy has at most {} rules", limits::APPROVAL_RULES_MAX));
        }
        for rule in rules {
            let printable = rule.tools.bytes().all(|byte| byte.is_ascii_graphic());
            if rule.tools.is_empty() || rule.tools.len() > limits::NAME_BYTES_MAX || !printable {
                return invalid(format!(
                    "tool pattern {:?} must be 1 to {} printable characters",
                    rule.tools,
                    limits::NAME_BYTES_MAX
                ));
            }
        }
        Ok(())
    }
}

impl Decider {
    /// Whether this decider may answer a tool use under `gate`.
    pub fn may_answer(decider: Option<&Decider>, gate: &ApprovalGate) -> bool {
        !gate.approver_only || decider.is_some_and(|decider| decider.role == Role::Approver)
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of
/// characters (none included) and everything else matches itself.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let pattern = pattern.as_bytes();
    let name = name.as_bytes();
    // Greedy matching with backtracking to the last `*`: linear in practice.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_and_globs() {
        assert!(matches_pattern("bash", "bash"));
        assert!(!matches_pattern("bash", "bashful"));
        assert!(matches_pattern("mcp__docs__*", "mcp__docs__search"));
        assert!(!matches_pattern("mcp__docs__*", "mcp__other__search"));
        assert!(matches_pattern("*", "anything"));
        assert!(matches_pattern("*__delete*", "mcp__a__delete_all"));
        assert!(matches_pattern("a*b*c", "aXXbYYc"));
        assert!(!matches_pattern("a*b*c", "aXXbYY"));
    }

    #[test]
    fn the_gate_prefers_a_rule_that_needs_an_approver() {
        let policy = ApprovalPolicy {
            workspace: "w".into(),
            version: 3,
            rules: vec![
                ApprovalRule { tools: "*".into(), approver_only: false },
                ApprovalRule { tools: "bash".into(), approver_only: true },
            ],
            updated_at_ms: 0,
        };
        let gate = policy.gate("bash").expect("bash is flagged");
        assert_eq!(gate, ApprovalGate { policy_version: 3, rule: "bash".into(), approver_only: true });
        assert!(!policy.gate("read").expect("flagged by *").approver_only);
        assert_eq!(ApprovalPolicy::empty("w").gate("bash"), None);
        let member = Decider { key_id: ApiKeyId::from_random(1), key_name: "m".into(), role: Role::Member };
        let approver = Decider { role: Role::Approver, ..member.clone() };
        assert!(!Decider::may_answer(Some(&member), &gate));
        assert!(!Decider::may_answer(None, &gate));
        assert!(Decider::may_answer(Some(&approver), &gate));
    }
}
