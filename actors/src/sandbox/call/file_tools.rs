//! The host-side file tools: `read`, `write`, `edit`, `glob` and `grep`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::capped_output::CappedOutput;
use super::workspace::Workspace;
use crate::sandbox::ToolOutput;

/// Directory entries `glob` and `grep` visit at most, so a huge tree costs bounded time.
const WALK_ENTRIES_MAX: usize = 100_000;
/// Paths `glob` lists at most.
const GLOB_MATCHES_MAX: usize = 1_000;
/// Matching lines `grep` lists at most.
const GREP_MATCHES_MAX: usize = 1_000;
/// Compiled size of a `grep` regex, so a hostile pattern cannot exhaust memory.
const REGEX_SIZE_BYTES_MAX: usize = 1 << 20;
/// Bytes of a line `grep` shows; longer lines are cut.
const GREP_LINE_BYTES_MAX: usize = 500;
/// Bytes of a line `grep` searches; the rest of a longer line is not searched.
const GREP_SCAN_BYTES_MAX: usize = 64 * 1024;
/// Files larger than this are not loaded by `edit`.
const EDIT_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// File tools confined to one workspace. Every method is blocking; callers run
/// them on a blocking thread. Every failure is a `ToolOutput` with `is_error`.
#[derive(Debug, Clone)]
pub(crate) struct FileTools {
    workspace: Workspace,
    output_bytes_max: usize,
    /// Wall-clock budget of one call; `read` and `grep` give up when it is spent.
    wall_clock_ms: u64,
}

#[derive(Deserialize)]
struct ReadInput {
    file_path: String,
    view_range: Option<(i64, i64)>,
}

#[derive(Deserialize)]
struct WriteInput {
    file_path: String,
    content: String,
}

#[derive(Deserialize)]
struct EditInput {
    file_path: String,
    old_string: String,
    new_string: String,
    #[serde(default)]
    replace_all: bool,
}

#[derive(Deserialize)]
struct SearchInput {
    pattern: String,
    path: Option<String>,
}

fn parse<T: for<'de> Deserialize<'de>>(tool: &str, input_json: &str) -> Result<T, ToolOutput> {
    serde_json::from_str(input_json).map_err(|error| ToolOutput::failure(format!("invalid input for {tool}: {error}")))
}

impl FileTools {
    pub(crate) fn new(workspace: Workspace, output_bytes_max: usize, wall_clock_ms: u64) -> FileTools {
        FileTools { workspace, output_bytes_max, wall_clock_ms }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.wall_clock_ms)
    }

    fn timed_out(&self, tool: &str) -> ToolOutput {
        ToolOutput::failure(format!("{tool} timed out after {} ms", self.wall_clock_ms))
    }

    /// Runs file tool `name`; `None` if `name` is not a file tool.
    pub(crate) fn run(&self, name: &str, input_json: &str) -> Option<ToolOutput> {
        let result = match name {
            "read" => parse(name, input_json).and_then(|input| self.read(input)),
            "write" => parse(name, input_json).and_then(|input| self.write(input)),
            "edit" => parse(name, input_json).and_then(|input| self.edit(input)),
            "glob" => parse(name, input_json).and_then(|input| self.glob(input)),
            "grep" => parse(name, input_json).and_then(|input| self.grep(input)),
            _ => return None,
        };
        Some(result.unwrap_or_else(|failure| failure))
    }

    fn read(&self, input: ReadInput) -> Result<ToolOutput, ToolOutput> {
        let path = self.workspace.existing(&input.file_path).map_err(ToolOutput::failure)?;
        if path.is_dir() {
            return Err(ToolOutput::failure(format!("{} is a directory; use glob to list it", input.file_path)));
        }
        // A FIFO or device would block or never end; only regular files are read.
        if !path.is_file() {
            return Err(ToolOutput::failure(format!("{} is not a regular file", input.file_path)));
        }
        let (first, last) = match input.view_range {
            None => (1, u64::MAX),
            Some((start, end)) if start >= 1 && (end == -1 || end >= start) => {
                (start as u64, if end == -1 { u64::MAX } else { end as u64 })
            }
            Some((start, end)) => {
                return Err(ToolOutput::failure(format!(
                    "invalid view_range [{start}, {end}]: lines are 1-based, start <= end, end -1 means to the end"
                )))
            }
        };
        let file = std::fs::File::open(&path).map_err(|error| io_failure(&input.file_path, error))?;
        let mut reader = std::io::BufReader::new(file);
        let mut output = CappedOutput::new(self.output_bytes_max);
        let mut line = Vec::new();
        let mut number: u64 = 0;
        let deadline = self.deadline();
        loop {
            if Instant::now() >= deadline {
                return Err(self.timed_out("read"));
            }
            line.clear();
            let read = read_line_bounded(&mut reader, &mut line, self.output_bytes_max)
                .map_err(|error| io_failure(&input.file_path, error))?;
            if read == 0 || number >= last {
                break;
            }
            number += 1;
            if number < first {
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            output.push_str(&format!("{number:>6}\t{}\n", text.trim_end_matches(['\n', '\r'])));
            if output.is_truncated() {
                output.stop_early();
                break;
            }
        }
        if number < first && input.view_range.is_some() {
            return Err(ToolOutput::failure(format!(
                "{} has {number} lines; view_range starts at line {first}",
                input.file_path
            )));
        }
        Ok(ToolOutput::success(output.finish()))
    }

    fn write(&self, input: WriteInput) -> Result<ToolOutput, ToolOutput> {
        let path = self.workspace.writable(&input.file_path).map_err(ToolOutput::failure)?;
        replace_file(&self.workspace, &path, input.content.as_bytes())
            .map_err(|error| io_failure(&input.file_path, error))?;
        Ok(ToolOutput::success(format!("wrote {} bytes to {}", input.content.len(), self.workspace.display(&path))))
    }

    fn edit(&self, input: EditInput) -> Result<ToolOutput, ToolOutput> {
        if input.old_string.is_empty() {
            return Err(ToolOutput::failure("old_string is empty; use write to create a file"));
        }
        if input.old_string == input.new_string {
            return Err(ToolOutput::failure("old_string and new_string are identical; nothing to change"));
        }
        let path = self.workspace.existing(&input.file_path).map_err(ToolOutput::failure)?;
        let metadata = std::fs::metadata(&path).map_err(|error| io_failure(&input.file_path, error))?;
        if !metadata.is_file() {
            return Err(ToolOutput::failure(format!("{} is not a regular file", input.file_path)));
        }
        if metadata.len() > EDIT_FILE_BYTES_MAX {
            return Err(ToolOutput::failure(format!(
                "{} is {} bytes; edit handles files up to {EDIT_FILE_BYTES_MAX} bytes",
                input.file_path,
                metadata.len()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|error| io_failure(&input.file_path, error))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ToolOutput::failure(format!("{} is not valid UTF-8 text", input.file_path)))?;
        let occurrences = text.matches(&input.old_string).count();
        if occurrences == 0 {
            return Err(ToolOutput::failure(format!("old_string was not found in {}", input.file_path)));
        }
        if occurrences > 1 && !input.replace_all {
            return Err(ToolOutput::failure(format!(
                "old_string occurs {occurrences} times in {}; add surrounding context to make it unique, \
                 or set replace_all to replace every occurrence",
                input.file_path
            )));
        }
        let edited = text.replace(&input.old_string, &input.new_string);
        replace_file(&self.workspace, &path, edited.as_bytes()).map_err(|error| io_failure(&input.file_path, error))?;
        Ok(ToolOutput::success(format!(
            "replaced {occurrences} occurrence{} in {}",
            if occurrences == 1 { "" } else { "s" },
            self.workspace.display(&path)
        )))
    }

    fn search_base(&self, path: Option<&str>) -> Result<PathBuf, ToolOutput> {
        match path {
            None => Ok(self.workspace.root().to_path_buf()),
            Some(requested) => self.workspace.existing(requested).map_err(ToolOutput::failure),
        }
    }

    fn glob(&self, input: SearchInput) -> Result<ToolOutput, ToolOutput> {
        let base = self.search_base(input.path.as_deref())?;
        let pattern = input.pattern.strip_prefix("/workspace/").unwrap_or(&input.pattern);
        let matcher = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|error| ToolOutput::failure(format!("invalid glob pattern {}: {error}", input.pattern)))?
            .compile_matcher();
        let mut matches = Vec::new();
        let mut limited = false;
        for entry in walkdir::WalkDir::new(&base).follow_links(false).min_depth(1).into_iter().take(WALK_ENTRIES_MAX) {
            let Ok(entry) = entry else { continue };
            let Ok(relative) = entry.path().strip_prefix(&base) else { continue };
            if matcher.is_match(relative) {
                if matches.len() == GLOB_MATCHES_MAX {
                    limited = true;
                    break;
                }
                matches.push(self.workspace.display(entry.path()));
            }
        }
        matches.sort();
        if matches.is_empty() {
            return Ok(ToolOutput::success(format!("no files match {}", input.pattern)));
        }
        let mut output = CappedOutput::new(self.output_bytes_max);
        for found in &matches {
            output.push_str(found);
            output.push_str("\n");
        }
        if limited {
            output.push_str(&format!("[stopped after {GLOB_MATCHES_MAX} matches]\n"));
        }
        Ok(ToolOutput::success(output.finish()))
    }

    fn grep(&self, input: SearchInput) -> Result<ToolOutput, ToolOutput> {
        let base = self.search_base(input.path.as_deref())?;
        let regex = regex::RegexBuilder::new(&input.pattern)
            .size_limit(REGEX_SIZE_BYTES_MAX)
            .build()
            .map_err(|error| ToolOutput::failure(format!("invalid regex {}: {error}", input.pattern)))?;
        let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&base)
            .follow_links(false)
            .into_iter()
            .take(WALK_ENTRIES_MAX)
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_file())
            .map(walkdir::DirEntry::into_path)
            .collect();
        files.sort();
        let mut output = CappedOutput::new(self.output_bytes_max);
        let mut found = 0;
        let deadline = self.deadline();
        for file in &files {
            if found == GREP_MATCHES_MAX || output.is_truncated() {
                output.push_str(&format!("[stopped after {found} matches]\n"));
                break;
            }
            found += self.grep_file(&regex, file, GREP_MATCHES_MAX - found, deadline, &mut output);
            if Instant::now() >= deadline {
                return Err(self.timed_out("grep"));
            }
        }
        if found == 0 {
            return Ok(ToolOutput::success(format!("no matches for {}", input.pattern)));
        }
        Ok(ToolOutput::success(output.finish()))
    }

    /// Appends `path:line:text` for each matching line of `file`; returns how many matched.
    /// Unreadable and binary files are skipped.
    fn grep_file(
        &self,
        regex: &regex::Regex,
        file: &Path,
        matches_max: usize,
        deadline: Instant,
        output: &mut CappedOutput,
    ) -> usize {
        let Ok(handle) = std::fs::File::open(file) else { return 0 };
        let mut reader = std::io::BufReader::new(handle);
        let shown = self.workspace.display(file);
        let mut line = Vec::new();
        let mut number = 0u64;
        let mut found = 0;
        while found < matches_max && !output.is_truncated() && Instant::now() < deadline {
            line.clear();
            match read_line_bounded(&mut reader, &mut line, GREP_SCAN_BYTES_MAX) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            number += 1;
            if line.contains(&0) {
                return found;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if regex.is_match(text) {
                found += 1;
                output.push_str(&format!("{shown}:{number}:{}\n", cut(text, GREP_LINE_BYTES_MAX)));
            }
        }
        found
    }
}

/// Reads one line (through `\n` or the end) into `line`, keeping at most
/// `kept_bytes_max` bytes of it, so a file that is one huge line costs bounded memory.
/// Returns the bytes consumed (0 at the end).
fn read_line_bounded(reader: &mut impl BufRead, line: &mut Vec<u8>, kept_bytes_max: usize) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            return Ok(consumed);
        }
        let (chunk, done) = match available.iter().position(|byte| *byte == b'\n') {
            Some(newline) => (&available[..=newline], true),
            None => (available, false),
        };
        let room = kept_bytes_max.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..room.min(chunk.len())]);
        let length = chunk.len();
        reader.consume(length);
        consumed += length;
        if done {
            return Ok(consumed);
        }
    }
}

fn cut(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn io_failure(requested: &str, error: std::io::Error) -> ToolOutput {
    ToolOutput::failure(format!("{requested}: {error}"))
}

/// Replaces `path` atomically: a new file next to it, then rename. The rename
/// replaces a directory entry and never follows a symlink at `path`.
fn replace_file(workspace: &Workspace, path: &Path, content: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.agentd-{:016x}", rand::random::<u64>()));
    let permissions = std::fs::metadata(path).ok().map(|metadata| metadata.permissions());
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&temporary)?;
        file.write_all(content)?;
        if let Some(permissions) = permissions {
            file.set_permissions(permissions)?;
        }
        file.sync_all()?;
        workspace.hand_over(&temporary)?;
        std::fs::rename(&temporary, path)
    };
    write().inspect_err(|_| {
        // Best effort: do not leave a half-written temporary file behind.
        let _ = std::fs::remove_file(&temporary);
    })
}
