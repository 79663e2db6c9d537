//! Length-prefixed bincode frames: a 4-byte big-endian length, then the
//! encoded message. The reader checks the length against a hard limit before
//! reading the body, and decoding is bounded by the same limit, so a hostile
//! peer can neither make a node allocate without bound nor make it panic.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::limits::CLUSTER_FRAME_BYTES_MAX;
use crate::Error;

pub const FRAME_HEADER_BYTES: usize = 4;

// The limit also caps what bincode may allocate while decoding one message.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<CLUSTER_FRAME_BYTES_MAX>()
}

/// Encodes a message body (no header).
pub fn encode_body<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(value, config()).map_err(|error| Error::Encode(error.to_string()))
}

/// Encodes a whole frame: header and body. Fails if the body exceeds `max_bytes`.
pub fn encode_frame<T: Serialize>(value: &T, max_bytes: usize) -> Result<Vec<u8>, Error> {
    let body = encode_body(value)?;
    if body.len() > max_bytes {
        return Err(Error::FrameTooLarge { len: body.len(), max: max_bytes });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length announced by a frame header, checked against `max_bytes`.
pub fn body_len(header: [u8; FRAME_HEADER_BYTES], max_bytes: usize) -> Result<usize, Error> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(Error::EmptyFrame);
    }
    if len > max_bytes {
        return Err(Error::FrameTooLarge { len, max: max_bytes });
    }
    Ok(len)
}

/// Decodes a message body. The whole body must be consumed.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let (value, read) =
        bincode::serde::decode_from_slice::<T, _>(body, config()).map_err(|error| Error::Decode(error.to_string()))?;
    if read != body.len() {
        return Err(Error::TrailingBytes { trailing: body.len() - read });
    }
    Ok(value)
}

/// Decodes a whole frame held in memory (header and body).
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8], max_bytes: usize) -> Result<T, Error> {
    let header: [u8; FRAME_HEADER_BYTES] = frame
        .get(..FRAME_HEADER_BYTES)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| Error::Decode("truncated frame header".into()))?;
    let len = body_len(header, max_bytes)?;
    let body = &frame[FRAME_HEADER_BYTES..];
    if body.len() < len {
        return Err(Error::Decode(format!("truncated frame: {} of {len} bytes", body.len())));
    }
    if body.len() > len {
        return Err(Error::TrailingBytes { trailing: body.len() - len });
    }
    decode_body(body)
}

/// The encoded size of a value, for enforcing payload limits.
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, Error> {
    Ok(encode_body(value)?.len())
}
