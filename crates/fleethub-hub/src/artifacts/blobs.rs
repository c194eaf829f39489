//! Firmware images on disk, content-addressed: `DIR/blobs/<sha256>`, written through `DIR/tmp/<random>`.
//!
//! An upload streams into a [`TempBlob`] that hashes what it writes; only a complete, checked image is
//! renamed into `blobs/` (after an fsync of the file, then of the directory), so a blob is always whole
//! and named by its true hash. A `TempBlob` dropped before it was placed (a failed check, an error, a
//! client gone mid-body and its handler future dropped) deletes its file. The tmp directory is emptied at
//! start, for what a crash left there.
//!
//! File I/O runs on tokio's blocking pool, a buffer of [`WRITE_BUFFER`] bytes at a time, so an upload holds
//! at most that much of the image in memory.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Bytes gathered before one write (and hash) on the blocking pool.
pub const WRITE_BUFFER: usize = 1024 * 1024;

/// The directories under the data directory's `artifacts/`.
#[derive(Clone, Debug)]
pub struct BlobDirectory {
    blobs: PathBuf,
    tmp: PathBuf,
}

impl BlobDirectory {
    /// Creates `root/blobs` and `root/tmp` if missing and empties `tmp`.
    pub fn open(root: &Path) -> io::Result<Self> {
        let directory = Self {
            blobs: root.join("blobs"),
            tmp: root.join("tmp"),
        };
        fs::create_dir_all(&directory.blobs)?;
        fs::create_dir_all(&directory.tmp)?;
        for entry in fs::read_dir(&directory.tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(directory)
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// Where the image with this SHA-256 (lowercase hex, checked by the caller) lives.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blobs.join(sha256)
    }

    /// The names of the blobs present (for the sweep of unreferenced ones at start).
    pub fn list_blobs(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.blobs)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    /// Starts a temporary file for an upload.
    pub async fn create_temp(&self) -> io::Result<TempBlob> {
        let mut name = [0u8; 16];
        getrandom::fill(&mut name).map_err(io::Error::other)?;
        let name: String = name.iter().map(|byte| format!("{byte:02x}")).collect();
        let path = self.tmp.join(name);
        let file = {
            let path = path.clone();
            blocking(move || {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
            })
            .await?
        };
        Ok(TempBlob {
            guard: TempPath(Some(path)),
            state: Some(WriterState {
                file,
                hasher: Sha256::new(),
                buffer: Vec::with_capacity(WRITE_BUFFER),
            }),
            size: 0,
        })
    }
}

/// A temporary file being written: deleted when dropped unless placed.
struct TempPath(Option<PathBuf>);

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // An unlink of our own temporary file: quick enough to do here, and doing it here (rather than
            // on the blocking pool) means the file is gone by the time a refused upload is answered.
            let _ = fs::remove_file(path);
        }
    }
}

struct WriterState {
    file: fs::File,
    hasher: Sha256,
    buffer: Vec<u8>,
}

/// An image being received: written to `tmp/` and hashed as it arrives.
pub struct TempBlob {
    guard: TempPath,
    /// `None` only while a write runs on the blocking pool (or after one failed).
    state: Option<WriterState>,
    size: u64,
}

/// A received image, fsynced, with its hash and size; still in `tmp/` (deleted if dropped).
pub struct FinishedBlob {
    guard: TempPath,
    pub sha256: String,
    pub size: u64,
}

impl TempBlob {
    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        let state = self.state.as_mut().ok_or_else(broken)?;
        state.buffer.extend_from_slice(chunk);
        self.size += chunk.len() as u64;
        if state.buffer.len() >= WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        let mut state = self.state.take().ok_or_else(broken)?;
        if state.buffer.is_empty() {
            self.state = Some(state);
            return Ok(());
        }
        let state = blocking(move || {
            state.file.write_all(&state.buffer)?;
            state.hasher.update(&state.buffer);
            state.buffer.clear();
            Ok(state)
        })
        .await?;
        self.state = Some(state);
        Ok(())
    }

    /// Writes what is buffered, fsyncs the file, and returns its hash and size.
    pub async fn finish(mut self) -> io::Result<FinishedBlob> {
        self.flush().await?;
        let state = self.state.take().ok_or_else(broken)?;
        let hasher = blocking(move || {
            state.file.sync_all()?;
            Ok(state.hasher)
        })
        .await?;
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(FinishedBlob {
            guard: TempPath(self.guard.0.take()),
            sha256,
            size: self.size,
        })
    }
}

impl FinishedBlob {
    /// Moves the image to `blobs/<sha256>` and fsyncs the directory; if a blob of that hash is already
    /// there (the same bytes, by their hash), the temporary file is just deleted. Blocking: call it on the
    /// blocking pool.
    pub fn place_blocking(mut self, directory: &BlobDirectory) -> io::Result<()> {
        let target = directory.blob_path(&self.sha256);
        if target.exists() {
            return Ok(()); // the guard deletes the temporary file
        }
        let source = self.guard.0.take().ok_or_else(broken)?;
        if let Err(error) = fs::rename(&source, &target) {
            self.guard.0 = Some(source);
            return Err(error);
        }
        fs::File::open(directory.blobs_dir())?.sync_all()
    }
}

fn broken() -> io::Error {
    io::Error::other("an earlier write to this upload's file failed")
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| io::Error::other(format!("blocking file task failed: {error}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(path)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_finished_blob_is_named_by_its_hash_and_nothing_is_left_in_tmp() {
        let root = tempfile::tempdir().unwrap();
        let directory = BlobDirectory::open(root.path()).unwrap();
        let mut blob = directory.create_temp().await.unwrap();
        let data: Vec<u8> = (0..(WRITE_BUFFER * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        for chunk in data.chunks(10_000) {
            blob.write(chunk).await.unwrap();
        }
        let finished = blob.finish().await.unwrap();
        let expected: String = Sha256::digest(&data)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(finished.sha256, expected);
        assert_eq!(finished.size, data.len() as u64);
        let placed = directory.clone();
        tokio::task::spawn_blocking(move || finished.place_blocking(&placed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fs::read(directory.blob_path(&expected)).unwrap(), data);
        assert!(names(directory.tmp_dir()).is_empty());
    }

    #[tokio::test]
    async fn dropped_blobs_leave_nothing_and_start_empties_tmp() {
        let root = tempfile::tempdir().unwrap();
        let directory = BlobDirectory::open(root.path()).unwrap();
        let mut blob = directory.create_temp().await.unwrap();
        blob.write(b"partial").await.unwrap();
        assert_eq!(names(directory.tmp_dir()).len(), 1);
        drop(blob);
        assert!(names(directory.tmp_dir()).is_empty());

        let finished = directory
            .create_temp()
            .await
            .unwrap()
            .finish()
            .await
            .unwrap();
        drop(finished);
        assert!(names(directory.tmp_dir()).is_empty());

        fs::write(directory.tmp_dir().join("left-by-a-crash"), b"x").unwrap();
        BlobDirectory::open(root.path()).unwrap();
        assert!(names(&root.path().join("tmp")).is_empty());
    }
}
