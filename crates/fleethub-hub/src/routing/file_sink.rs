//! The file sink endpoint: messages appended as JSON lines (the event stream's JSON, one message a line)
//! to `DATA_DIR/routes/<endpoint>/<path>`, rotated by size.
//!
//! A batch of lines is written and fsynced before the endpoint's cursor moves past it. A failed write is
//! cut back to the last whole line, so a retry never leaves half a line; a torn line from a crash is cut
//! off when the sink is opened again. When the file reaches the size limit it is renamed `<path>.<n>`
//! (`n` = 1, 2, ...: the higher, the newer) and a new file starts; rotated files are kept (moving them
//! away is the user's business). Delivery is at least once: after a crash between the fsync and the
//! cursor's save, the last lines may be written again; each line's `partition` and `sequenceNumber` tell
//! repeats apart. Blocking: callers run it with `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// The directory of file sinks inside the data directory.
pub const ROUTES_DIRECTORY: &str = "routes";

pub struct FileSinkWriter {
    path: PathBuf,
    /// The relative path it was opened for, to notice a configuration change.
    configured: String,
    max_bytes: u64,
    file: File,
    size: u64,
    next_rotation: u64,
}

impl FileSinkWriter {
    /// Opens (creating directories) `routes_root/<endpoint>/<relative>`; `relative` was validated
    /// (relative, no `.`/`..`), so the file stays inside the endpoint's directory.
    pub fn open(
        routes_root: &Path,
        endpoint: &str,
        relative: &str,
        max_bytes: u64,
    ) -> io::Result<FileSinkWriter> {
        let path = relative
            .split('/')
            .fold(routes_root.join(endpoint), |path, name| path.join(name));
        let directory = path
            .parent()
            .expect("a sink path has a parent: the endpoint's directory")
            .to_owned();
        fs::create_dir_all(&directory)?;
        let WholeLines {
            file,
            length: whole,
            cut_torn_line,
        } = open_whole_lines(&path)?;
        if cut_torn_line {
            tracing::warn!(path = %path.display(), "cutting a torn last line off a file sink");
        }
        let file_name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
            .to_owned();
        let mut next_rotation = 1;
        for entry in fs::read_dir(&directory)? {
            let name = entry?.file_name();
            let Some(rotation) = name
                .to_str()
                .and_then(|name| name.strip_prefix(&file_name))
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|number| number.parse::<u64>().ok())
            else {
                continue;
            };
            next_rotation = next_rotation.max(rotation + 1);
        }
        Ok(FileSinkWriter {
            path,
            configured: relative.to_owned(),
            max_bytes,
            file,
            size: whole,
            next_rotation,
        })
    }

    /// The relative path this writer was opened for.
    pub fn configured_path(&self) -> &str {
        &self.configured
    }

    /// Appends whole lines and fsyncs them, rotating first when the file is full.
    pub fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + lines.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if let Err(error) = self
            .file
            .write_all(lines)
            .and_then(|()| self.file.sync_data())
        {
            let _ = self.file.set_len(self.size);
            return Err(error);
        }
        self.size += lines.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(format!(".{}", self.next_rotation));
        fs::rename(&self.path, &rotated)?;
        self.file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        if let Some(directory) = self.path.parent() {
            File::open(directory)?.sync_all()?;
        }
        self.size = 0;
        self.next_rotation += 1;
        Ok(())
    }
}

/// A file of JSON lines opened for appending by [`open_whole_lines`].
pub(super) struct WholeLines {
    pub file: File,
    /// The file's length: whole lines only.
    pub length: u64,
    /// Whether a torn last line (a crash mid-write) was cut off.
    pub cut_torn_line: bool,
}

/// Opens `path` for appending, creating it if missing, and cuts a torn last line off it, durably.
pub(super) fn open_whole_lines(path: &Path) -> io::Result<WholeLines> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let length = whole_lines_length(&mut file)?;
    let cut_torn_line = length != file.metadata()?.len();
    if cut_torn_line {
        file.set_len(length)?;
        file.sync_data()?;
    }
    Ok(WholeLines {
        file,
        length,
        cut_torn_line,
    })
}

/// The length of the file up to and including its last newline.
fn whole_lines_length(file: &mut File) -> io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(&mut *file);
    let mut length = 0u64;
    let mut whole = 0u64;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(whole);
        }
        if let Some(last_newline) = buffer.iter().rposition(|byte| *byte == b'\n') {
            whole = length + last_newline as u64 + 1;
        }
        let consumed = buffer.len();
        length += consumed as u64;
        reader.consume(consumed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_rotated_by_size_and_torn_lines_cut() {
        let root = tempfile::tempdir().unwrap();
        let mut sink = FileSinkWriter::open(root.path(), "archive", "a/b.jsonl", 10).unwrap();
        sink.append(b"line1\n").unwrap();
        sink.append(b"line2\n").unwrap(); // 12 > 10: rotates first
        sink.append(b"x\n").unwrap();
        let directory = root.path().join("archive").join("a");
        assert_eq!(
            fs::read_to_string(directory.join("b.jsonl.1")).unwrap(),
            "line1\n"
        );
        assert_eq!(
            fs::read_to_string(directory.join("b.jsonl")).unwrap(),
            "line2\nx\n"
        );
        drop(sink);
        let mut file = OpenOptions::new()
            .append(true)
            .open(directory.join("b.jsonl"))
            .unwrap();
        file.write_all(b"torn").unwrap();
        let mut sink = FileSinkWriter::open(root.path(), "archive", "a/b.jsonl", 10).unwrap();
        assert_eq!(sink.next_rotation, 2, "continues after the existing .1");
        sink.append(b"y\n").unwrap();
        assert_eq!(
            fs::read_to_string(directory.join("b.jsonl")).unwrap(),
            "line2\nx\ny\n"
        );
    }
}
