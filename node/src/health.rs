//! Whether a node is ready to take requests: the answer of a supervisor's
//! readiness probe (`agentd start --metrics` serves it as `/readyz`).
//!
//! A node is ready when it has not failed, its own metadata replica lists
//! it as a member (it has been admitted and has caught up far enough to
//! know it), and every group it hosts knows a leader. A node that is ready
//! can answer any request at once: it serves or forwards it one hop. One
//! that is not is still alive (a partitioned node, or one whose shards lost
//! their quorum, recovers by itself), so liveness asks nothing of it.
//! Running out of disk does not make a node unready: it keeps serving
//! reads and answers writes with `storage_full`.

use agentd_protocol::ids::{GroupId, NodeId};

/// What a node lacks to be ready, as sentences; none when it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub problems: Vec<String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Where the node stands in its own metadata replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    /// Not listed (yet): a joining node before its replica has caught up.
    NotListed,
    Removed,
    /// The metadata group is not hosted here, or its state is unreadable.
    Unknown,
}

/// What readiness is decided from, gathered by `NodeHandle::readiness`.
#[derive(Debug, Clone)]
pub struct ReadinessFacts {
    pub node_id: NodeId,
    /// Why the node has failed (a group stopped, or its identity was refused).
    pub failure: Option<String>,
    pub membership: Membership,
    /// The groups hosted here that know no leader.
    pub leaderless: Vec<GroupId>,
}

/// Groups named one by one in a problem before the rest are counted.
const LEADERLESS_NAMED_MAX: usize = 5;

/// The decision, as a pure function of the facts.
pub fn readiness(facts: &ReadinessFacts) -> Readiness {
    let mut problems = Vec::new();
    if let Some(failure) = &facts.failure {
        problems.push(format!("failed: {failure}"));
    }
    match facts.membership {
        Membership::Member => {}
        Membership::NotListed => {
            problems.push(format!("node {} is not a member in its metadata replica yet", facts.node_id))
        }
        Membership::Removed => problems.push(format!("node {} was removed from the cluster", facts.node_id)),
        Membership::Unknown => problems.push("the metadata group is not open on this node".to_string()),
    }
    if !facts.leaderless.is_empty() {
        let named: Vec<String> = facts.leaderless.iter().take(LEADERLESS_NAMED_MAX).map(ToString::to_string).collect();
        let more = facts.leaderless.len().saturating_sub(LEADERLESS_NAMED_MAX);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        problems.push(format!("no known leader for {}{more}", named.join(", ")));
    }
    Readiness { problems }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentd_protocol::ids::ShardId;

    fn facts() -> ReadinessFacts {
        ReadinessFacts { node_id: 2, failure: None, membership: Membership::Member, leaderless: Vec::new() }
    }

    #[test]
    fn a_member_whose_groups_have_leaders_is_ready() {
        assert!(readiness(&facts()).is_ready());
    }

    #[test]
    fn each_lack_is_named() {
        let cases = [
            (ReadinessFacts { failure: Some("shard-1 stopped: disk".into()), ..facts() }, "failed: shard-1 stopped"),
            (ReadinessFacts { membership: Membership::NotListed, ..facts() }, "node 2 is not a member"),
            (ReadinessFacts { membership: Membership::Removed, ..facts() }, "node 2 was removed"),
            (ReadinessFacts { membership: Membership::Unknown, ..facts() }, "metadata group is not open"),
            (ReadinessFacts { leaderless: vec![GroupId::Metadata], ..facts() }, "no known leader for metadata"),
        ];
        for (facts, needle) in cases {
            let answer = readiness(&facts);
            assert!(!answer.is_ready());
            assert!(answer.problems.iter().any(|problem| problem.contains(needle)), "{needle:?} in {answer:?}");
        }
    }

    #[test]
    fn many_leaderless_groups_are_counted_not_listed() {
        let leaderless = (0..64).map(|shard| GroupId::Shard(ShardId(shard))).collect();
        let answer = readiness(&ReadinessFacts { leaderless, ..facts() });
        assert_eq!(answer.problems.len(), 1);
        assert!(answer.problems[0].ends_with("and 59 more"), "{answer:?}");
    }
}
