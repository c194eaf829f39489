//! Dead letters: the messages a custom endpoint gave up on, kept where the user can read them
//! (`GET /routing/deadLetters`, `fleethub route dead-letters`).
//!
//! One JSON line per [`DeadLetter`] in `DATA_DIR/routing/deadletters.jsonl`, appended and fsynced before the
//! endpoint's cursor moves past the message (so a crash may repeat a dead letter, never lose one). Bounded:
//! when the file reaches its size limit it becomes `deadletters.1.jsonl` (replacing the previous one) and a
//! new file starts, so at most about twice the limit is kept. Ids grow by one and are never reused, across
//! restarts and rotations. A torn last line (a crash mid-write) is cut off when the file is next opened.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fleethub_protocol::routing::{DeadLetter, DeadLetterPage};

use super::file_sink::{WholeLines, open_whole_lines};

const CURRENT: &str = "deadletters.jsonl";
const PREVIOUS: &str = "deadletters.1.jsonl";

/// The dead-letter file of a hub. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    inner: Arc<Inner>,
}

struct Inner {
    directory: PathBuf,
    max_bytes: u64,
    /// `None` until first used (opening scans the files for the last id).
    state: Mutex<Option<State>>,
}

struct State {
    file: File,
    size: u64,
    next_id: u64,
}

impl DeadLetters {
    pub fn new(directory: PathBuf, max_bytes: u64) -> DeadLetters {
        DeadLetters {
            inner: Arc::new(Inner {
                directory,
                max_bytes,
                state: Mutex::new(None),
            }),
        }
    }

    /// Appends a dead letter (its `id` is assigned here) and returns it once it is durable.
    pub async fn append(&self, mut letter: DeadLetter) -> io::Result<DeadLetter> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.state.lock().expect("dead-letter lock poisoned");
            if guard.is_none() {
                *guard = Some(open(&inner.directory)?);
            }
            let state = guard.as_mut().expect("opened above");
            if state.size >= inner.max_bytes {
                rotate(&inner.directory, state)?;
            }
            letter.id = state.next_id;
            let mut line = serde_json::to_vec(&letter).expect("dead letters always serialise");
            line.push(b'\n');
            if let Err(error) = state
                .file
                .write_all(&line)
                .and_then(|()| state.file.sync_data())
            {
                // Cut a partial line off, so the file stays whole lines.
                let _ = state.file.set_len(state.size);
                return Err(error);
            }
            state.size += line.len() as u64;
            state.next_id += 1;
            Ok(letter)
        })
        .await
        .map_err(|error| io::Error::other(error.to_string()))?
    }

    /// Dead letters with an id at or after `from`, oldest first, of `endpoint` (any case) when given, at
    /// most `top`.
    pub async fn read(
        &self,
        endpoint: Option<String>,
        from: u64,
        top: usize,
    ) -> io::Result<DeadLetterPage> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // Hold the lock so that a rotation does not move lines between the two reads.
            let _guard = inner.state.lock().expect("dead-letter lock poisoned");
            let mut page = DeadLetterPage::default();
            for name in [PREVIOUS, CURRENT] {
                let path = inner.directory.join(name);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                };
                for line in BufReader::new(file).lines() {
                    let line = line?;
                    // A torn last line: not a dead letter yet.
                    let Ok(letter) = serde_json::from_str::<DeadLetter>(&line) else {
                        continue;
                    };
                    if letter.id < from
                        || endpoint
                            .as_deref()
                            .is_some_and(|name| !letter.endpoint_name.eq_ignore_ascii_case(name))
                    {
                        continue;
                    }
                    if page.dead_letters.len() == top {
                        page.next_id = Some(letter.id);
                        return Ok(page);
                    }
                    page.dead_letters.push(letter);
                }
            }
            Ok(page)
        })
        .await
        .map_err(|error| io::Error::other(error.to_string()))?
    }
}

/// Opens the current file for appending (cutting a torn last line) and finds the next id.
fn open(directory: &Path) -> io::Result<State> {
    fs::create_dir_all(directory)?;
    let mut last_id = last_id(&directory.join(PREVIOUS))?;
    let path = directory.join(CURRENT);
    let WholeLines {
        mut file,
        length: whole,
        ..
    } = open_whole_lines(&path)?;
    if let Some(id) = last_id_in(File::open(&path)?)? {
        last_id = Some(last_id.map_or(id, |previous| previous.max(id)));
    }
    file.seek(SeekFrom::End(0))?;
    Ok(State {
        file,
        size: whole,
        next_id: last_id.map_or(1, |id| id + 1),
    })
}

fn last_id(path: &Path) -> io::Result<Option<u64>> {
    match File::open(path) {
        Ok(file) => last_id_in(file),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

fn last_id_in(file: File) -> io::Result<Option<u64>> {
    let mut last = None;
    for line in BufReader::new(file).lines() {
        if let Ok(letter) = serde_json::from_str::<DeadLetter>(&line?) {
            last = Some(letter.id);
        }
    }
    Ok(last)
}

fn rotate(directory: &Path, state: &mut State) -> io::Result<()> {
    fs::rename(directory.join(CURRENT), directory.join(PREVIOUS))?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(directory.join(CURRENT))?;
    File::open(directory)?.sync_all()?;
    state.file = file;
    state.size = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleethub_protocol::events::EventMessage;
    use fleethub_protocol::routing::EndpointType;
    use time::OffsetDateTime;

    fn letter(endpoint: &str) -> DeadLetter {
        let now = OffsetDateTime::UNIX_EPOCH;
        DeadLetter {
            id: 0,
            endpoint_name: endpoint.to_owned(),
            endpoint_type: EndpointType::Webhook,
            dead_lettered_time: now,
            first_attempt_time: now,
            attempts: 3,
            last_error: "HTTP 500".to_owned(),
            message: EventMessage::new(0, 7, now, &[], &[], b"body"),
        }
    }

    #[tokio::test]
    async fn dead_letters_get_increasing_ids_across_reopening_rotation_and_torn_lines() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().to_owned();
        let letters = DeadLetters::new(path.clone(), 600);
        for endpoint in ["a", "b", "a"] {
            letters.append(letter(endpoint)).await.unwrap();
        }
        let page = letters.read(Some("A".to_owned()), 0, 10).await.unwrap();
        assert_eq!(
            page.dead_letters.iter().map(|l| l.id).collect::<Vec<_>>(),
            [1, 3]
        );
        let first = letters.read(None, 0, 2).await.unwrap();
        assert_eq!(first.dead_letters.len(), 2);
        assert_eq!(first.next_id, Some(3));
        let rest = letters.read(None, 3, 2).await.unwrap();
        assert_eq!(rest.dead_letters.len(), 1);
        assert_eq!(rest.next_id, None);

        // A crash mid-line, then a new run: the torn line goes, ids go on.
        drop(letters);
        let mut file = OpenOptions::new()
            .append(true)
            .open(path.join(CURRENT))
            .unwrap();
        file.write_all(br#"{"id":4,"endpo"#).unwrap();
        let letters = DeadLetters::new(path.clone(), 600);
        assert_eq!(letters.append(letter("b")).await.unwrap().id, 4);
        // The size limit rotates the file; both files are read, in order.
        for _ in 0..4 {
            letters.append(letter("c")).await.unwrap();
        }
        assert!(path.join(PREVIOUS).exists());
        let all = letters.read(None, 0, 100).await.unwrap();
        let ids: Vec<u64> = all.dead_letters.iter().map(|l| l.id).collect();
        assert!(ids.windows(2).all(|pair| pair[1] == pair[0] + 1), "{ids:?}");
        assert_eq!(ids.last(), Some(&8));
        let letters = DeadLetters::new(path, 600);
        assert_eq!(letters.append(letter("d")).await.unwrap().id, 9);
    }
}
