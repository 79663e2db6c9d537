//! Output collection with a byte cap.

/// Collects tool output up to a byte cap and counts what it had to drop, so a
/// command printing gigabytes costs the host no more than the cap.
#[derive(Debug)]
pub(crate) struct CappedOutput {
    kept: Vec<u8>,
    dropped_bytes: u64,
    cap_bytes: usize,
    stopped_early: bool,
}

impl CappedOutput {
    pub(crate) fn new(cap_bytes: usize) -> CappedOutput {
        CappedOutput { kept: Vec::new(), dropped_bytes: 0, cap_bytes, stopped_early: false }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let room = self.cap_bytes.saturating_sub(self.kept.len());
        let taken = room.min(bytes.len());
        self.kept.extend_from_slice(&bytes[..taken]);
        self.dropped_bytes += (bytes.len() - taken) as u64;
    }

    pub(crate) fn push_str(&mut self, text: &str) {
        self.push(text.as_bytes());
    }

    /// True once anything was dropped: callers that produce output lazily can stop early.
    pub(crate) fn is_truncated(&self) -> bool {
        self.dropped_bytes > 0
    }

    /// Records that the producer stopped before the end once the cap was hit, so the
    /// dropped count is a lower bound.
    pub(crate) fn stop_early(&mut self) {
        self.stopped_early = true;
    }

    /// The kept output (invalid UTF-8 replaced) followed by a note if anything was dropped.
    pub(crate) fn finish(self) -> String {
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped_bytes > 0 {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "[output truncated: {}{} bytes dropped, the limit is {} bytes]",
                if self.stopped_early { "more than " } else { "" },
                self.dropped_bytes,
                self.cap_bytes
            ));
        }
        text
    }
}
