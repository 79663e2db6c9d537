//! Tenancy: workspaces, API keys, and who a request comes from.
//!
//! Every agent, environment, vault and session belongs to one workspace. A
//! client proves who it is with an API key; the key's workspace is the only
//! one it sees (another workspace's object answers "not found", so nothing
//! leaks its existence). Keys are stored hashed in the metadata group and
//! replicated to every node, so any node can authenticate any key.

use serde::{Deserialize, Serialize};

use crate::ids::ApiKeyId;
use crate::{limits, ApiError};

/// The workspace objects created before workspaces existed belong to, and
/// the workspace of the admin key `--init` writes.
pub const DEFAULT_WORKSPACE: &str = "default";

/// Checks a workspace name: 1 to [`limits::WORKSPACE_NAME_BYTES_MAX`] bytes of
/// lowercase letters, digits, `-` and `_`, starting with a letter or digit.
pub fn validate_workspace(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= limits::WORKSPACE_NAME_BYTES_MAX
        && name.bytes().next().is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest {
            message: format!(
                "workspace name {:?} must be 1 to {} lowercase letters, digits, '-' or '_'",
                name.chars().take(80).collect::<String>(),
                limits::WORKSPACE_NAME_BYTES_MAX
            ),
        })
    }
}

/// What a key may do besides using its workspace's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Uses the objects of its workspace.
    Member,
    /// Also creates, lists and revokes the keys of every workspace.
    Admin,
    /// A member that may also answer tool uses a workspace policy reserves
    /// for approvers.
    Approver,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Approver => "approver",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(name: &str) -> Result<Role, String> {
        [Role::Member, Role::Admin, Role::Approver]
            .into_iter()
            .find(|role| role.name() == name)
            .ok_or_else(|| format!("unknown role {name:?}; known: member, admin, approver"))
    }
}

/// Who makes a request. Every operation of a node takes one; a node that
/// forwards a request forwards its caller with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Caller {
    /// A client that presented a valid API key.
    Key { key_id: ApiKeyId, workspace: String, role: Role },
    /// A node's own components (the brain, the hands): not bound to a workspace.
    Node,
}

impl Caller {
    /// The workspace the caller's objects live in; `None` for a node, which
    /// may read every workspace.
    pub fn workspace(&self) -> Option<&str> {
        match self {
            Caller::Key { workspace, .. } => Some(workspace),
            Caller::Node => None,
        }
    }

    /// Whether an object of `workspace` is visible to this caller.
    pub fn sees(&self, workspace: &str) -> bool {
        self.workspace().is_none_or(|own| own == workspace)
    }

    /// The workspace new objects of this caller belong to.
    pub fn owning_workspace(&self) -> &str {
        self.workspace().unwrap_or(DEFAULT_WORKSPACE)
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Key { role: Role::Admin, .. } | Caller::Node)
    }
}

/// An API key as the metadata group stores it: never the key itself, only
/// its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub name: String,
    pub workspace: String,
    pub role: Role,
    pub secret_sha256: [u8; 32],
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

impl ApiKeyRecord {
    pub fn info(&self) -> ApiKeyInfo {
        ApiKeyInfo {
            id: self.id,
            name: self.name.clone(),
            workspace: self.workspace.clone(),
            role: self.role,
            created_at_ms: self.created_at_ms,
            revoked_at_ms: self.revoked_at_ms,
        }
    }
}

/// What clients see of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    pub id: ApiKeyId,
    pub name: String,
    pub workspace: String,
    pub role: Role,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// The text form of a key: `agentd_` + the key id's 32 hex digits + `_` +
/// 64 hex digits of secret. The id finds the record; the secret's hash must
/// match it.
pub const API_KEY_PREFIX: &str = "agentd_";

/// A key split into its id and secret, or `None` when it is not shaped like one.
pub fn parse_api_key(text: &str) -> Option<(ApiKeyId, &str)> {
    let rest = text.strip_prefix(API_KEY_PREFIX)?;
    let (id_hex, secret) = rest.split_once('_')?;
    if secret.len() != 64 || !secret.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let id = format!("{}{id_hex}", ApiKeyId::PREFIX).parse().ok()?;
    Some((id, secret))
}

/// The text form of the key whose id is `id` and secret `secret` (64 hex digits).
pub fn format_api_key(id: ApiKeyId, secret: &str) -> String {
    let id_hex = id.to_string();
    format!("{API_KEY_PREFIX}{}_{secret}", &id_hex[ApiKeyId::PREFIX.len()..])
}

/// SHA-256 of a key's secret part, as records store it.
pub fn secret_sha256(secret: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret.as_bytes()).into()
}

/// A new key made of `id_bits` and 32 bytes of `secret` (both drawn by the
/// caller): its text, to show once, and its record, to store.
pub fn new_api_key(
    id_bits: u128,
    secret: [u8; 32],
    name: String,
    workspace: String,
    role: Role,
    created_at_ms: u64,
) -> (String, ApiKeyRecord) {
    let id = ApiKeyId::from_random(id_bits);
    let secret_hex: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
    let record = ApiKeyRecord {
        id,
        name,
        workspace,
        role,
        secret_sha256: secret_sha256(&secret_hex),
        created_at_ms,
        revoked_at_ms: None,
    };
    (format_api_key(id, &secret_hex), record)
}

impl ApiKeyRecord {
    /// Whether `secret` is this key's, compared in constant time (the
    /// comparison must not tell how much of a guess was right).
    pub fn matches(&self, secret: &str) -> bool {
        self.secret_sha256.iter().zip(secret_sha256(secret)).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_text_and_malformed_ones_are_refused() {
        let id = ApiKeyId::from_random(7);
        let secret = "ab".repeat(32);
        let text = format_api_key(id, &secret);
        assert_eq!(parse_api_key(&text), Some((id, secret.as_str())));
        for bad in ["", "agentd_", "agentd_00_11", &text[..text.len() - 1], &text.replace("agentd_", "other_")] {
            assert_eq!(parse_api_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_new_key_matches_its_record_only() {
        let (text, record) = new_api_key(9, [7; 32], "ci".into(), "a".into(), Role::Member, 5);
        let (id, secret) = parse_api_key(&text).expect("well formed");
        assert_eq!(id, record.id);
        assert!(record.matches(secret));
        assert!(!record.matches(&"0".repeat(64)));
    }

    #[test]
    fn workspace_names_are_checked() {
        for good in ["default", "team-a", "a", "x_1"] {
            assert!(validate_workspace(good).is_ok(), "{good}");
        }
        for bad in ["", "Team", "-a", "a b", &"a".repeat(65)] {
            assert!(validate_workspace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_caller_sees_its_own_workspace_only() {
        let caller = Caller::Key { key_id: ApiKeyId::from_random(1), workspace: "a".into(), role: Role::Member };
        assert!(caller.sees("a"));
        assert!(!caller.sees("b"));
        assert!(Caller::Node.sees("b"));
        assert!(!caller.is_admin());
    }
}
