//! Splits a `text/event-stream` body, fed in arbitrary chunks, into the
//! data of its events.

use crate::model::ModelError;

/// Bound on one event-stream line; a streamed delta is a few kilobytes.
pub const SSE_LINE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// An incremental server-sent-events decoder that keeps only `data:`
/// fields (the Messages API repeats the event name inside the data).
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: Option<String>,
}

impl SseDecoder {
    /// Feeds a chunk; returns the data of every event it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, ModelError> {
        let mut events = Vec::new();
        for part in chunk.split_inclusive(|byte| *byte == b'\n') {
            self.line.extend_from_slice(part);
            if self.line.len() > SSE_LINE_BYTES_MAX {
                return Err(ModelError::InvalidResponse(format!(
                    "an event-stream line longer than {SSE_LINE_BYTES_MAX} bytes"
                )));
            }
            if self.line.last() == Some(&b'\n') {
                let line = std::mem::take(&mut self.line);
                if let Some(data) = self.line_done(&line)? {
                    events.push(data);
                }
            }
        }
        Ok(events)
    }

    /// Ends the stream; returns the data of a last event that had no blank
    /// line after it.
    pub fn finish(mut self) -> Result<Option<String>, ModelError> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            if let Some(data) = self.line_done(&line)? {
                return Ok(Some(data));
            }
        }
        Ok(self.data.take())
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<String>, ModelError> {
        let line = std::str::from_utf8(line)
            .map_err(|_| ModelError::InvalidResponse("an event-stream line is not UTF-8".into()))?;
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            return Ok(self.data.take());
        }
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        // Other fields (event, id, retry) and comments carry nothing we need.
        Ok(None)
    }
}
