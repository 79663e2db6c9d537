//! Sealing vault secrets: AES-256-GCM with the cluster's secrets key, which
//! every node keeps in its data directory (`DATA/tls/secrets.key`) and which
//! never enters the replicated log. A sealed value is nonce || ciphertext.

use anyhow::{anyhow, bail, Result};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

pub struct SecretsKey {
    key: LessSafeKey,
    bytes: [u8; 32],
}

impl SecretsKey {
    #[allow(clippy::disallowed_methods, reason = "a key must be unpredictable; it never reaches a simulator's trace")]
    pub fn generate() -> Result<Self> {
        Self::from_bytes(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| anyhow!("invalid secrets key"))?;
        Ok(Self { key: LessSafeKey::new(unbound), bytes })
    }

    pub fn from_hex(hex: &str) -> Result<Self> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.is_ascii() {
            bail!("a secrets key is 64 hex digits");
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).map_err(|_| anyhow!("a secrets key is hex"))?;
        }
        Self::from_bytes(bytes)
    }

    pub fn to_hex(&self) -> String {
        self.bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Seals `value`, binding it to `context` (vault and secret name) so a
    /// sealed value cannot be moved to another secret.
    pub fn seal(&self, context: &str, value: &str) -> Result<Vec<u8>> {
        #[allow(
            clippy::disallowed_methods,
            reason = "a nonce must never repeat under one key; only the ciphertext, whose length it does not change, \
                      enters the log"
        )]
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut in_out = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| anyhow!("sealing failed"))?;
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend(in_out);
        Ok(sealed)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<String> {
        if sealed.len() < NONCE_LEN {
            bail!("sealed secret is truncated");
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow!("bad nonce"))?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| anyhow!("a sealed secret does not open with this cluster's key"))?;
        Ok(String::from_utf8(plain.to_vec())?)
    }
}

/// The context a secret is sealed under.
pub fn seal_context(vault_id: &agentd_protocol::ids::VaultId, secret_name: &str) -> String {
    format!("{vault_id}/{secret_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let key = SecretsKey::generate().unwrap();
        let sealed = key.seal("vault/a", "hunter2").unwrap();
        assert!(!sealed.windows(7).any(|window| window == b"hunter2"));
        assert_eq!(key.open("vault/a", &sealed).unwrap(), "hunter2");
        assert!(key.open("vault/b", &sealed).is_err());
        assert!(SecretsKey::generate().unwrap().open("vault/a", &sealed).is_err());
        assert!(key.open("vault/a", &sealed[..5]).is_err());
        let again = SecretsKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(again.open("vault/a", &sealed).unwrap(), "hunter2");
        assert!(SecretsKey::from_hex("zz").is_err());
    }
}
