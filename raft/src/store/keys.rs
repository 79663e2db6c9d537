//! The on-disk key layout, in one place.
//!
//! One RocksDB instance holds every Raft group of a node. Every key of every
//! column family starts with the group's [`GroupId::storage_key`] in
//! big-endian order, so that a group's keys are contiguous and a whole group
//! (or one part of it) can be scanned or deleted as a single range.
//!
//! | column family | key                                  | value                         |
//! |---------------|--------------------------------------|-------------------------------|
//! | `log`         | group, index (u64 BE)                | `Entry`                       |
//! | `raft`        | group, tag                           | vote, committed or purged id  |
//! | `state`       | group, tag, rest                     | state machine records         |
//! | `snapshot`    | group                                | the group's current snapshot  |
//!
//! One key belongs to no group: the store's format record ([`format_key`],
//! a single zero byte in `raft`), which sorts before every group's keys.
//!
//! **Invariant:** after the group prefix, no key has more than
//! [`SUFFIX_BYTES_MAX`] bytes. That is what lets [`group_end`] name a key that
//! sorts after every key of a group, including the metadata group whose
//! prefix is all ones and so has no successor of the same width.

use agentd_protocol::ids::{AgentId, ApiKeyId, EnvironmentId, EventId, GroupId, NodeId, SessionId, ShardId, VaultId};
use agentd_protocol::resource::{CreationCursor, ResourceId, ResourceKind};

use crate::store::disk::Cf;

pub(crate) const LOG_CF: Cf = Cf::Log;
pub(crate) const RAFT_CF: Cf = Cf::Raft;
pub(crate) const STATE_CF: Cf = Cf::State;
pub(crate) const SNAPSHOT_CF: Cf = Cf::Snapshot;

pub(crate) const GROUP_BYTES: usize = 4;
const SESSION_BYTES: usize = 16;
const EVENT_ID_BYTES: usize = 16;

/// The longest key suffix after the group prefix: an event-id index key.
pub(crate) const SUFFIX_BYTES_MAX: usize = 1 + SESSION_BYTES + EVENT_ID_BYTES;

/// Tags of the `raft` column family.
const VOTE_TAG: u8 = 1;
const COMMITTED_TAG: u8 = 2;
const PURGED_TAG: u8 = 3;
const REJOIN_TAG: u8 = 4;

/// Tags of the `state` column family. The applied-state record sorts first.
const APPLIED_TAG: u8 = 0;
const SESSION_TAG: u8 = 1;
const EVENT_TAG: u8 = 2;
const EVENT_ID_TAG: u8 = 3;
const CLUSTER_TAG: u8 = 4;
const NODE_TAG: u8 = 5;
const PLACEMENT_TAG: u8 = 6;
const AGENT_TAG: u8 = 7;
const ENVIRONMENT_TAG: u8 = 8;
const VAULT_TAG: u8 = 9;
/// Tags of the workspace era: resources (agents, environments, vaults) by
/// id and by workspace and creation; API keys; sessions' details, usage and
/// index by workspace and creation.
const AGENT_RESOURCE_TAG: u8 = 10;
const ENVIRONMENT_RESOURCE_TAG: u8 = 11;
const VAULT_RESOURCE_TAG: u8 = 12;
const AGENT_INDEX_TAG: u8 = 13;
const ENVIRONMENT_INDEX_TAG: u8 = 14;
const VAULT_INDEX_TAG: u8 = 15;
const API_KEY_TAG: u8 = 16;
const SESSION_DETAILS_TAG: u8 = 17;
const SESSION_USAGE_TAG: u8 = 18;
const SESSION_INDEX_TAG: u8 = 19;
/// Node ids removed from the cluster for good (`agentd node remove`).
const REMOVED_NODE_TAG: u8 = 20;
/// Workspace approval policies, by workspace hash (metadata group).
const APPROVAL_POLICY_TAG: u8 = 21;

fn key(group: GroupId, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(GROUP_BYTES + SUFFIX_BYTES_MAX);
    key.extend_from_slice(&group.storage_key().to_be_bytes());
    for part in parts {
        key.extend_from_slice(part);
    }
    assert!(key.len() <= GROUP_BYTES + SUFFIX_BYTES_MAX, "key layout exceeds SUFFIX_BYTES_MAX");
    key
}

/// The key of the store's format record: one byte, shorter than any group
/// prefix, so no group's range holds it.
pub(crate) fn format_key() -> Vec<u8> {
    vec![0]
}

/// The prefix shared by all keys of a group, in every column family.
pub(crate) fn group_prefix(group: GroupId) -> Vec<u8> {
    key(group, &[])
}

/// A key that sorts after every key of `group` and before every key of the
/// next group: the prefix followed by more `0xff` bytes than any suffix has.
pub(crate) fn group_end(group: GroupId) -> Vec<u8> {
    let mut end = group_prefix(group);
    end.resize(GROUP_BYTES + SUFFIX_BYTES_MAX + 1, 0xff);
    end
}

/// A key that sorts after every key starting with `prefix` (at most
/// [`SUFFIX_BYTES_MAX`] bytes past the group) and before any key whose
/// prefix of the same length is greater.
fn prefix_end(mut prefix: Vec<u8>) -> Vec<u8> {
    prefix.resize(GROUP_BYTES + SUFFIX_BYTES_MAX + 1, 0xff);
    prefix
}

pub(crate) fn log_key(group: GroupId, index: u64) -> Vec<u8> {
    key(group, &[&index.to_be_bytes()])
}

/// The index of a log key of `group`, or `None` if the key has another shape.
pub(crate) fn log_index(group: GroupId, key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(group_prefix(group).as_slice())?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// The first log key after `index`, or the end of the group's log when
/// `index` is the largest possible index.
pub(crate) fn log_key_after(group: GroupId, index: u64) -> Vec<u8> {
    match index.checked_add(1) {
        Some(next) => log_key(group, next),
        None => group_end(group),
    }
}

pub(crate) fn vote_key(group: GroupId) -> Vec<u8> {
    key(group, &[&[VOTE_TAG]])
}

pub(crate) fn committed_key(group: GroupId) -> Vec<u8> {
    key(group, &[&[COMMITTED_TAG]])
}

pub(crate) fn purged_key(group: GroupId) -> Vec<u8> {
    key(group, &[&[PURGED_TAG]])
}

/// The log id a deleted replica must catch up to before it stands for
/// election (see `RaftHost::retire_group`).
pub(crate) fn rejoin_key(group: GroupId) -> Vec<u8> {
    key(group, &[&[REJOIN_TAG]])
}

pub(crate) fn snapshot_key(group: GroupId) -> Vec<u8> {
    group_prefix(group)
}

pub(crate) fn applied_key(group: GroupId) -> Vec<u8> {
    key(group, &[&[APPLIED_TAG]])
}

pub(crate) fn session_key(group: GroupId, session_id: SessionId) -> Vec<u8> {
    key(group, &[&[SESSION_TAG], &session_id.0])
}

/// The range `[start, end)` of every session record of a group.
pub(crate) fn session_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let start = key(group, &[&[SESSION_TAG]]);
    (start.clone(), prefix_end(start))
}

/// The session id of a session key, or `None` if the key has another shape.
pub(crate) fn session_id_of(group: GroupId, key: &[u8]) -> Option<SessionId> {
    let rest = key.strip_prefix(group_prefix(group).as_slice())?;
    let id = rest.strip_prefix(&[SESSION_TAG])?;
    Some(SessionId(id.try_into().ok()?))
}

pub(crate) fn event_key(group: GroupId, session_id: SessionId, seq: u64) -> Vec<u8> {
    key(group, &[&[EVENT_TAG], &session_id.0, &seq.to_be_bytes()])
}

/// The end of the range of a session's events.
pub(crate) fn events_end(group: GroupId, session_id: SessionId) -> Vec<u8> {
    prefix_end(key(group, &[&[EVENT_TAG], &session_id.0]))
}

pub(crate) fn event_id_key(group: GroupId, session_id: SessionId, event_id: EventId) -> Vec<u8> {
    key(group, &[&[EVENT_ID_TAG], &session_id.0, &event_id.0])
}

pub(crate) fn cluster_key(group: GroupId) -> Vec<u8> {
    key(group, &[&[CLUSTER_TAG]])
}

pub(crate) fn node_key(group: GroupId, node_id: NodeId) -> Vec<u8> {
    key(group, &[&[NODE_TAG], &node_id.to_be_bytes()])
}

/// The range `[start, end)` of every node record of a group.
pub(crate) fn node_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let start = key(group, &[&[NODE_TAG]]);
    (start.clone(), prefix_end(start))
}

/// The node id of a node key, or `None` if the key has another shape.
pub(crate) fn node_id_of(group: GroupId, key: &[u8]) -> Option<NodeId> {
    let rest = key.strip_prefix(group_prefix(group).as_slice())?;
    let id = rest.strip_prefix(&[NODE_TAG])?;
    Some(NodeId::from_be_bytes(id.try_into().ok()?))
}

/// The record that `node_id` was removed from the cluster: its id never serves again.
pub(crate) fn removed_node_key(group: GroupId, node_id: NodeId) -> Vec<u8> {
    key(group, &[&[REMOVED_NODE_TAG], &node_id.to_be_bytes()])
}

pub(crate) fn placement_key(group: GroupId, shard: ShardId) -> Vec<u8> {
    key(group, &[&[PLACEMENT_TAG], &shard.0.to_be_bytes()])
}

pub(crate) fn agent_key(group: GroupId, agent_id: AgentId) -> Vec<u8> {
    key(group, &[&[AGENT_TAG], &agent_id.0])
}

pub(crate) fn vault_key(group: GroupId, vault_id: VaultId) -> Vec<u8> {
    key(group, &[&[VAULT_TAG], &vault_id.0])
}

pub(crate) fn environment_key(group: GroupId, environment_id: EnvironmentId) -> Vec<u8> {
    key(group, &[&[ENVIRONMENT_TAG], &environment_id.0])
}

/// The range `[start, end)` of every placement record of a group.
pub(crate) fn placement_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let start = key(group, &[&[PLACEMENT_TAG]]);
    (start.clone(), prefix_end(start))
}

/// The shard of a placement key, or `None` if the key has another shape.
pub(crate) fn shard_of_placement(group: GroupId, key: &[u8]) -> Option<ShardId> {
    let rest = key.strip_prefix(group_prefix(group).as_slice())?;
    let shard = rest.strip_prefix(&[PLACEMENT_TAG])?;
    Some(ShardId(u32::from_be_bytes(shard.try_into().ok()?)))
}

/// A workspace name as 8 bytes of index keys: FNV-1a, stable across builds.
/// Two workspaces may share a hash; readers check the record's workspace.
pub(crate) fn workspace_hash(workspace: &str) -> [u8; 8] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in workspace.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.to_be_bytes()
}

fn resource_tag(kind: ResourceKind) -> u8 {
    match kind {
        ResourceKind::Agent => AGENT_RESOURCE_TAG,
        ResourceKind::Environment => ENVIRONMENT_RESOURCE_TAG,
        ResourceKind::Vault => VAULT_RESOURCE_TAG,
    }
}

fn resource_index_tag(kind: ResourceKind) -> u8 {
    match kind {
        ResourceKind::Agent => AGENT_INDEX_TAG,
        ResourceKind::Environment => ENVIRONMENT_INDEX_TAG,
        ResourceKind::Vault => VAULT_INDEX_TAG,
    }
}

pub(crate) fn resource_key(group: GroupId, id: ResourceId) -> Vec<u8> {
    key(group, &[&[resource_tag(id.kind())], &id.bytes()])
}

/// An index key: tag, workspace hash, creation time (ms, BE), object id.
/// Sorting by it lists a workspace's objects by creation, ties by id.
fn index_key(group: GroupId, tag: u8, workspace: &str, position: CreationCursor) -> Vec<u8> {
    key(group, &[&[tag], &workspace_hash(workspace), &position.created_at_ms.to_be_bytes(), &position.id])
}

/// The range `[start, end)` of a workspace's index keys under `tag`.
fn index_range(group: GroupId, tag: u8, workspace: &str) -> (Vec<u8>, Vec<u8>) {
    let start = key(group, &[&[tag], &workspace_hash(workspace)]);
    (start.clone(), prefix_end(start))
}

/// The creation position stored in an index key under `tag`.
fn index_position(group: GroupId, tag: u8, key: &[u8]) -> Option<CreationCursor> {
    let rest = key.strip_prefix(group_prefix(group).as_slice())?.strip_prefix(&[tag])?;
    if rest.len() != 8 + 8 + 16 {
        return None;
    }
    let created_at_ms = u64::from_be_bytes(rest[8..16].try_into().ok()?);
    let id = rest[16..].try_into().ok()?;
    Some(CreationCursor { created_at_ms, id })
}

/// The index of resources of one kind, ordered by creation within a workspace.
pub(crate) struct Index {
    pub(crate) tag: u8,
}

impl Index {
    pub(crate) fn resources(kind: ResourceKind) -> Index {
        Index { tag: resource_index_tag(kind) }
    }

    pub(crate) fn sessions() -> Index {
        Index { tag: SESSION_INDEX_TAG }
    }

    pub(crate) fn key(&self, group: GroupId, workspace: &str, position: CreationCursor) -> Vec<u8> {
        index_key(group, self.tag, workspace, position)
    }

    pub(crate) fn range(&self, group: GroupId, workspace: &str) -> (Vec<u8>, Vec<u8>) {
        index_range(group, self.tag, workspace)
    }

    pub(crate) fn position(&self, group: GroupId, key: &[u8]) -> Option<CreationCursor> {
        index_position(group, self.tag, key)
    }
}

/// A workspace's approval policy. The record holds the workspace's name, so a
/// hash shared by two names is noticed, not mixed up.
pub(crate) fn approval_policy_key(group: GroupId, workspace: &str) -> Vec<u8> {
    key(group, &[&[APPROVAL_POLICY_TAG], &workspace_hash(workspace)])
}

pub(crate) fn api_key_key(group: GroupId, key_id: ApiKeyId) -> Vec<u8> {
    key(group, &[&[API_KEY_TAG], &key_id.0])
}

/// The range `[start, end)` of every API key of a group.
pub(crate) fn api_key_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let start = key(group, &[&[API_KEY_TAG]]);
    (start.clone(), prefix_end(start))
}

pub(crate) fn session_details_key(group: GroupId, session_id: SessionId) -> Vec<u8> {
    key(group, &[&[SESSION_DETAILS_TAG], &session_id.0])
}

pub(crate) fn session_usage_key(group: GroupId, session_id: SessionId) -> Vec<u8> {
    key(group, &[&[SESSION_USAGE_TAG], &session_id.0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_end_separates_adjacent_groups() {
        let shard = GroupId::Shard(ShardId(7));
        let next = GroupId::Shard(ShardId(8));
        assert!(log_key(shard, u64::MAX) < group_end(shard));
        assert!(event_id_key(shard, SessionId([0xff; 16]), EventId([0xff; 16])) < group_end(shard));
        assert!(group_end(shard) < group_prefix(next));
        // The metadata group has the largest prefix; its end still covers its keys.
        let metadata = GroupId::Metadata;
        assert!(log_key(metadata, u64::MAX) < group_end(metadata));
        assert!(group_prefix(metadata) > group_end(GroupId::Shard(ShardId(u32::MAX - 1))));
    }

    #[test]
    fn key_parsers_reject_other_shapes() {
        let group = GroupId::Shard(ShardId(1));
        assert_eq!(log_index(group, &log_key(group, 42)), Some(42));
        assert_eq!(log_index(group, &log_key(GroupId::Shard(ShardId(2)), 42)), None);
        assert_eq!(log_index(group, &vote_key(group)), None);
        let session = SessionId::from_random(5);
        assert_eq!(session_id_of(group, &session_key(group, session)), Some(session));
        assert_eq!(session_id_of(group, &node_key(group, 3)), None);
        assert_eq!(node_id_of(group, &node_key(group, 3)), Some(3));
        assert_eq!(shard_of_placement(group, &placement_key(group, ShardId(9))), Some(ShardId(9)));
    }

    #[test]
    fn index_keys_fit_and_sort_by_creation_within_a_workspace() {
        let group = GroupId::Metadata;
        let index = Index::sessions();
        let early = CreationCursor { created_at_ms: 5, id: [0xff; 16] };
        let late = CreationCursor { created_at_ms: 6, id: [0; 16] };
        assert!(index.key(group, "a", early) < index.key(group, "a", late));
        assert_eq!(index.position(group, &index.key(group, "a", late)), Some(late));
        let (start, end) = index.range(group, "a");
        assert!(start < index.key(group, "a", early) && index.key(group, "a", late) < end);
        assert!(index.key(group, "a", late) < group_end(group));
        assert_eq!(index.position(group, &resource_key(group, ResourceId::Agent(AgentId([1; 16])))), None);
    }

    #[test]
    fn events_of_a_session_are_bounded_by_events_end() {
        let group = GroupId::Shard(ShardId(1));
        let session = SessionId([0xff; 16]);
        assert!(event_key(group, session, u64::MAX) < events_end(group, session));
        assert!(events_end(group, session) < event_id_key(group, SessionId([0; 16]), EventId([0; 16])));
    }
}
