//! What a node keeps in its data directory besides the database: its TLS
//! identity, the cluster CA, and the join token.
//!
//! ```text
//! DATA/node.json        node id (a restart with another id is refused)
//! DATA/tls/ca.pem       cluster CA certificate
//! DATA/tls/ca.key       cluster CA key (every node can admit new nodes)
//! DATA/tls/node.pem     this node's certificate
//! DATA/tls/node.key     this node's key
//! DATA/tls/secrets.key  the key that seals vault secrets (same on every node)
//! DATA/join-token       token that admits new nodes: agentd-join.SECRET.CA_FINGERPRINT
//! DATA/joining          a joining node's seed, until the cluster has admitted it
//! DATA/db/              RocksDB
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use agentd_protocol::ids::NodeId;
use agentd_transport::tls::{ClusterCa, NodeIdentity};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

const TOKEN_PREFIX: &str = "agentd-join";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    pub ca_fingerprint: String,
}

impl JoinToken {
    #[allow(
        clippy::disallowed_methods,
        reason = "a join secret must be unpredictable; it never reaches a simulator's trace"
    )]
    pub fn generate(ca: &ClusterCa) -> Self {
        Self { secret: format!("{:032x}", rand::random::<u128>()), ca_fingerprint: ca.fingerprint() }
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut parts = text.trim().split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(TOKEN_PREFIX), Some(secret), Some(fingerprint), None)
                if !secret.is_empty() && fingerprint.len() == 64 && fingerprint.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                Ok(Self { secret: secret.to_string(), ca_fingerprint: fingerprint.to_ascii_lowercase() })
            }
            _ => bail!("malformed join token: expected {TOKEN_PREFIX}.SECRET.CA_FINGERPRINT (see DATA/join-token on a cluster node)"),
        }
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.{}", self.secret, self.ca_fingerprint)
    }
}

/// A new admin key's text, with an unpredictable secret.
#[allow(clippy::disallowed_methods, reason = "a key's secret must be unpredictable; the simulator makes its own")]
pub fn generate_admin_key() -> String {
    let (text, _) = agentd_protocol::tenancy::new_api_key(
        rand::random(),
        rand::random(),
        ADMIN_KEY_NAME.into(),
        agentd_protocol::tenancy::DEFAULT_WORKSPACE.into(),
        agentd_protocol::tenancy::Role::Admin,
        0,
    );
    text
}

/// The name of the admin key `--init` makes.
pub const ADMIN_KEY_NAME: &str = "admin (--init)";

#[derive(Debug, Serialize, Deserialize)]
struct NodeFile {
    node_id: NodeId,
}

/// The files of one node's data directory.
pub struct DataDir {
    root: PathBuf,
}

/// Everything a started node needs from its data directory.
pub struct Stored {
    pub identity: NodeIdentity,
    pub ca: ClusterCa,
    pub token: JoinToken,
    pub secrets_key: crate::vault::SecretsKey,
    /// The admin key of a cluster this node creates (`--init`): stored in the
    /// metadata group when the cluster is initialised, and written to
    /// `DATA/admin-key` for the operator. `None` on every other start.
    pub admin_key: Option<String>,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join("db")
    }

    pub fn token_path(&self) -> PathBuf {
        self.root.join("join-token")
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join("tls").join("ca.pem")
    }

    /// Whether this directory already belongs to a cluster member.
    pub fn is_initialised(&self) -> bool {
        self.root.join("node.json").exists()
    }

    /// Loads a member's identity, checking it belongs to `node_id`.
    pub fn load(&self, node_id: NodeId) -> Result<Stored> {
        let node_file: NodeFile = serde_json::from_str(&read(&self.root.join("node.json"))?)
            .with_context(|| format!("{} is corrupt", self.root.join("node.json").display()))?;
        if node_file.node_id != node_id {
            bail!("data directory {} belongs to node {}, not node {node_id}", self.root.display(), node_file.node_id);
        }
        let tls = self.root.join("tls");
        let ca = ClusterCa::from_pem(&read(&tls.join("ca.pem"))?, &read(&tls.join("ca.key"))?)?;
        let identity = NodeIdentity {
            ca_cert_pem: read(&tls.join("ca.pem"))?,
            cert_pem: read(&tls.join("node.pem"))?,
            key_pem: read(&tls.join("node.key"))?,
        };
        let token = JoinToken::parse(&read(&self.token_path())?)?;
        let secrets_key = crate::vault::SecretsKey::from_hex(&read(&tls.join("secrets.key"))?)?;
        Ok(Stored { identity, ca, token, secrets_key, admin_key: None })
    }

    /// Where `--init` writes the cluster's first admin key.
    pub fn admin_key_path(&self) -> PathBuf {
        self.root.join("admin-key")
    }

    /// Where a joining node keeps its seed's address from the moment it has
    /// its certificate until the cluster has admitted it.
    pub fn joining_path(&self) -> PathBuf {
        self.root.join("joining")
    }

    /// The seed of a join that has not been admitted yet: a node stopped
    /// between receiving its certificate and its admission asks again.
    pub fn pending_admission(&self) -> Result<Option<String>> {
        match fs::read_to_string(self.joining_path()) {
            Ok(seed) if !seed.trim().is_empty() => Ok(Some(seed.trim().to_string())),
            Ok(_) => bail!("{} is empty; it should name the seed of this node's join", self.joining_path().display()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", self.joining_path().display())),
        }
    }

    /// Records that the cluster has admitted this node.
    pub fn mark_admitted(&self) -> Result<()> {
        match fs::remove_file(self.joining_path()) {
            Ok(()) => sync_dir(&self.root),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error).with_context(|| format!("cannot remove {}", self.joining_path().display())),
        }
    }

    /// Writes a new member's files, and for a joining node (`joining` is its
    /// seed) the record that it still has to be admitted. `node.json` is
    /// written last, so a crash part-way leaves a directory that is not yet
    /// considered initialised.
    pub fn save(&self, node_id: NodeId, stored: &Stored, joining: Option<&str>) -> Result<()> {
        let tls = self.root.join("tls");
        fs::create_dir_all(&tls).with_context(|| format!("cannot create {}", tls.display()))?;
        write_private(&tls.join("ca.pem"), &stored.ca.cert_pem())?;
        write_private(&tls.join("ca.key"), &stored.ca.key_pem())?;
        write_private(&tls.join("node.pem"), &stored.identity.cert_pem)?;
        write_private(&tls.join("node.key"), &stored.identity.key_pem)?;
        write_private(&tls.join("secrets.key"), &stored.secrets_key.to_hex())?;
        write_private(&self.token_path(), &format!("{}\n", stored.token))?;
        if let Some(admin_key) = &stored.admin_key {
            write_private(&self.admin_key_path(), &format!("{admin_key}\n"))?;
        }
        if let Some(seed) = joining {
            write_private(&self.joining_path(), &format!("{seed}\n"))?;
        }
        write_private(&self.root.join("node.json"), &serde_json::to_string_pretty(&NodeFile { node_id })?)?;
        Ok(())
    }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes a file readable only by its owner, durably.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Makes a removal in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|dir| dir.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_parse_and_reject_garbage() {
        let token = JoinToken { secret: "abc".into(), ca_fingerprint: "a".repeat(64) };
        assert_eq!(JoinToken::parse(&token.to_string()).unwrap(), token);
        for bad in ["", "agentd-join", "agentd-join.abc", "other.abc.aaaa", &format!("agentd-join..{}", "a".repeat(64))]
        {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_join_is_pending_until_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert_eq!(data.pending_admission().unwrap(), None);
        let credentials = crate::credentials::ClusterCredentials::generate().unwrap();
        let ca = credentials.ca().unwrap();
        let stored = Stored {
            identity: ca.issue_node(2, "127.0.0.1").unwrap(),
            ca,
            token: credentials.token().clone(),
            secrets_key: crate::vault::SecretsKey::generate().unwrap(),
            admin_key: None,
        };
        data.save(2, &stored, Some("seed.example:7100")).unwrap();
        assert!(data.is_initialised());
        assert_eq!(data.pending_admission().unwrap().as_deref(), Some("seed.example:7100"));
        data.mark_admitted().unwrap();
        assert_eq!(data.pending_admission().unwrap(), None);
        data.mark_admitted().unwrap();
        assert_eq!(data.load(2).unwrap().token, stored.token);
    }
}
