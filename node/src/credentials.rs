//! A cluster's credentials made before its first node starts: the CA, the
//! join token and the first admin key, as files in one directory (a
//! Kubernetes Secret mounted into every pod, say).
//!
//! ```text
//! DIR/ca.pem      cluster CA certificate
//! DIR/ca.key      cluster CA key
//! DIR/join-token  agentd-join.SECRET.CA_FINGERPRINT (the fingerprint of DIR/ca.pem)
//! DIR/admin-key   the cluster's first API key, role admin, workspace `default`
//! ```
//!
//! Without them `--init` makes all three at random, so nobody knows the join
//! token until the first node has run; with them every node knows it in
//! advance, and the nodes of a StatefulSet can start at the same time: the
//! first with `--init --credentials DIR`, the others with `--join SEED
//! --credentials DIR`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use agentd_protocol::tenancy::parse_api_key;
use agentd_transport::tls::ClusterCa;
use anyhow::{bail, Context, Result};

use crate::identity::{generate_admin_key, JoinToken};

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const JOIN_TOKEN_FILE: &str = "join-token";
const ADMIN_KEY_FILE: &str = "admin-key";

/// The files of a credentials directory, in the order they are written.
pub const CREDENTIAL_FILES: [&str; 4] = [CA_CERT_FILE, CA_KEY_FILE, JOIN_TOKEN_FILE, ADMIN_KEY_FILE];

/// A new cluster's CA, join token and admin key, checked to belong together.
#[derive(Clone)]
pub struct ClusterCredentials {
    ca_cert_pem: String,
    ca_key_pem: String,
    token: JoinToken,
    admin_key: String,
}

impl std::fmt::Debug for ClusterCredentials {
    /// Shows the CA fingerprint only; everything else is secret.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClusterCredentials")
            .field("ca_fingerprint", &self.token.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

impl ClusterCredentials {
    /// New credentials: a fresh CA, a join token for it and an admin key.
    pub fn generate() -> Result<Self> {
        let ca = ClusterCa::generate()?;
        let token = JoinToken::generate(&ca);
        Ok(Self { ca_cert_pem: ca.cert_pem(), ca_key_pem: ca.key_pem(), token, admin_key: generate_admin_key() })
    }

    /// Reads the credentials in `dir`, refusing files that do not belong
    /// together (a join token made for another CA) or do not parse.
    pub fn read(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).with_context(|| format!("cannot read the credential {}", path.display()))
        };
        let (ca_cert_pem, ca_key_pem) = (read(CA_CERT_FILE)?, read(CA_KEY_FILE)?);
        let ca = ClusterCa::from_pem(&ca_cert_pem, &ca_key_pem)
            .with_context(|| format!("{} and {} are not a CA", dir.join(CA_CERT_FILE).display(), CA_KEY_FILE))?;
        let token = JoinToken::parse(&read(JOIN_TOKEN_FILE)?)
            .with_context(|| format!("in {}", dir.join(JOIN_TOKEN_FILE).display()))?;
        if token.ca_fingerprint != ca.fingerprint() {
            bail!(
                "{} was made for another CA than {}: use the files of one `agentd cluster credentials` run",
                dir.join(JOIN_TOKEN_FILE).display(),
                dir.join(CA_CERT_FILE).display()
            );
        }
        let admin_key = read(ADMIN_KEY_FILE)?.trim().to_string();
        if parse_api_key(&admin_key).is_none() {
            bail!("{} is not an agentd API key (agentd_ID_SECRET)", dir.join(ADMIN_KEY_FILE).display());
        }
        Ok(Self { ca_cert_pem, ca_key_pem, token, admin_key })
    }

    /// Writes the credentials into `dir` (created if missing), each file
    /// readable by its owner only. Refuses to overwrite any existing file:
    /// replacing a running cluster's credentials would lock out new nodes.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if let Some(existing) = CREDENTIAL_FILES.iter().map(|name| dir.join(name)).find(|path| path.exists()) {
            bail!("{} exists; credentials are written to a new directory only", existing.display());
        }
        let contents = [
            self.ca_cert_pem.clone(),
            self.ca_key_pem.clone(),
            format!("{}\n", self.token),
            format!("{}\n", self.admin_key),
        ];
        for (name, text) in CREDENTIAL_FILES.iter().zip(contents) {
            write_new_private(&dir.join(name), &text)?;
        }
        Ok(())
    }

    /// The CA, loaded from its PEM (checked when the credentials were made or read).
    pub fn ca(&self) -> Result<ClusterCa> {
        Ok(ClusterCa::from_pem(&self.ca_cert_pem, &self.ca_key_pem)?)
    }

    pub fn token(&self) -> &JoinToken {
        &self.token
    }

    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }
}

/// Creates `path` (which must not exist) readable only by its owner, durably.
fn write_new_private(path: &Path, contents: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_through_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let made = ClusterCredentials::generate().unwrap();
        made.write(dir.path()).unwrap();
        let read = ClusterCredentials::read(dir.path()).unwrap();
        assert_eq!(read.token(), made.token());
        assert_eq!(read.admin_key(), made.admin_key());
        assert_eq!(read.ca().unwrap().fingerprint(), made.token().ca_fingerprint);
        let error = made.write(dir.path()).unwrap_err().to_string();
        assert!(error.contains("exists"), "{error}");
    }

    #[test]
    fn a_token_of_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ClusterCredentials::generate().unwrap().write(dir.path()).unwrap();
        let other = ClusterCredentials::generate().unwrap();
        fs::write(dir.path().join(JOIN_TOKEN_FILE), other.token().to_string()).unwrap();
        let error = format!("{:#}", ClusterCredentials::read(dir.path()).unwrap_err());
        assert!(error.contains("another CA"), "{error}");
    }

    #[test]
    fn missing_or_malformed_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = format!("{:#}", ClusterCredentials::read(dir.path()).unwrap_err());
        assert!(error.contains("ca.pem"), "{error}");
        ClusterCredentials::generate().unwrap().write(dir.path()).unwrap();
        fs::write(dir.path().join(ADMIN_KEY_FILE), "not a key").unwrap();
        let error = format!("{:#}", ClusterCredentials::read(dir.path()).unwrap_err());
        assert!(error.contains("admin-key"), "{error}");
    }
}
