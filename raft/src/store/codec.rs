//! Encoding of stored values, and the conversion of storage errors into the
//! `io::Error`s that openraft's storage traits return.
//!
//! Values are bincode bodies (`agentd_protocol::frame`), whose decoder is
//! bounded and never panics: bytes read back from disk are as untrusted as
//! bytes from the network, and a bad record becomes [`Error::Corrupt`].

use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// Encodes a value to be stored.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    Ok(agentd_protocol::frame::encode_body(value)?)
}

/// Decodes a stored value; `what` names the record in the error.
pub(crate) fn decode<T: DeserializeOwned>(what: impl FnOnce() -> String, bytes: &[u8]) -> Result<T, Error> {
    agentd_protocol::frame::decode_body(bytes)
        .map_err(|error| Error::Corrupt { what: what(), message: error.to_string() })
}

/// Converts an error of this layer into the error type of openraft's storage
/// traits. Corruption keeps its own kind so that callers can tell it apart.
pub(crate) fn io_error(error: Error) -> io::Error {
    match error {
        Error::Io(error) => error,
        Error::Corrupt { .. } => io::Error::new(io::ErrorKind::InvalidData, error.to_string()),
        other => io::Error::other(other.to_string()),
    }
}
