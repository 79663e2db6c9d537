//! Frame IO over any async byte stream (QUIC streams in production). The
//! length is checked against the caller's limit before the body is read.

use agentd_protocol::frame::{self, FRAME_HEADER_BYTES};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;

/// Writes one frame.
pub async fn write_frame<W, T>(writer: &mut W, value: &T, max_bytes: usize) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = frame::encode_frame(value, max_bytes)?;
    writer.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame. Returns `Ok(None)` when the stream ends cleanly before a
/// frame starts; a stream that ends inside a frame is an error.
pub async fn read_frame<R, T>(reader: &mut R, max_bytes: usize) -> Result<Option<T>, Error>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    match read_frame_body(reader, max_bytes).await? {
        Some(body) => Ok(Some(frame::decode_body(&body)?)),
        None => Ok(None),
    }
}

/// Reads one frame's body, undecoded (for a reader that tries more than one
/// type); `Ok(None)` as for [`read_frame`].
pub async fn read_frame_body<R>(reader: &mut R, max_bytes: usize) -> Result<Option<Vec<u8>>, Error>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < FRAME_HEADER_BYTES {
        let read = reader.read(&mut header[filled..]).await?;
        if read == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(agentd_protocol::Error::Decode("stream ended inside a frame header".into()).into());
        }
        filled += read;
    }
    let len = frame::body_len(header, max_bytes)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(|error| match error.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            Error::Protocol(agentd_protocol::Error::Decode(format!("stream ended inside a {len}-byte frame")))
        }
        _ => Error::Io(error),
    })?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_truncation_is_an_error() {
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &(7u64, "seven".to_string()), 1024).await.unwrap();
        let decoded: Option<(u64, String)> = read_frame(&mut buffer.as_slice(), 1024).await.unwrap();
        assert_eq!(decoded, Some((7, "seven".to_string())));

        let empty: Option<u64> = read_frame(&mut [].as_slice(), 1024).await.unwrap();
        assert_eq!(empty, None);

        let truncated = &buffer[..buffer.len() - 1];
        assert!(read_frame::<_, (u64, String)>(&mut &truncated[..], 1024).await.is_err());
        assert!(read_frame::<_, (u64, String)>(&mut &buffer[..2], 1024).await.is_err());
        assert!(matches!(
            read_frame::<_, (u64, String)>(&mut buffer.as_slice(), 4).await,
            Err(Error::Protocol(agentd_protocol::Error::FrameTooLarge { .. }))
        ));
    }
}
