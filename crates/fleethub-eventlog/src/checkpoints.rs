//! Consumer groups and their checkpoints: per partition, the offset of the last event a group has
//! processed. One small JSON file per group, replaced atomically (temporary file, fsync, rename, fsync of
//! the directory), so a checkpoint that was acknowledged survives a crash and a torn one never shows.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::segment::sync_directory;

/// The name of a consumer group: 1 to 64 characters, letters, digits, `.`, `_` and `-`, starting with a
/// letter, a digit or `$` (Event Hubs' default group is `$Default`). It is also a file name, so nothing
/// else is allowed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsumerGroup(String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "consumer group {name:?} is not valid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter, a digit or '$'"
)]
pub struct InvalidConsumerGroup {
    pub name: String,
}

impl ConsumerGroup {
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidConsumerGroup> {
        let name = name.into();
        let mut characters = name.chars();
        let first_ok = characters
            .next()
            .is_some_and(|first| first.is_ascii_alphanumeric() || first == '$');
        let rest_ok = characters.all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-')
        });
        if first_ok && rest_ok && name.len() <= 64 {
            Ok(Self(name))
        } else {
            Err(InvalidConsumerGroup { name })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConsumerGroup {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::str::FromStr for ConsumerGroup {
    type Err = InvalidConsumerGroup;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

#[derive(Serialize, Deserialize, Default)]
struct CheckpointFile {
    /// Partition number (as text, JSON keys being strings) to the offset of the last processed event.
    checkpoints: BTreeMap<String, u64>,
}

/// The checkpoint files of one log. Blocking: callers run it off the async runtime.
pub(crate) struct CheckpointStore {
    directory: PathBuf,
    /// Serialises read-modify-write of the files.
    lock: Mutex<()>,
}

impl CheckpointStore {
    pub(crate) fn open(directory: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&directory)?;
        for entry in fs::read_dir(&directory)? {
            let path = entry?.path();
            if path.extension().is_some_and(|extension| extension == "tmp") {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(Self {
            directory,
            lock: Mutex::new(()),
        })
    }

    fn path(&self, group: &ConsumerGroup) -> PathBuf {
        self.directory.join(format!("{}.json", group.as_str()))
    }

    fn read(&self, group: &ConsumerGroup) -> io::Result<BTreeMap<u32, u64>> {
        let text = match fs::read(self.path(group)) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(error) => return Err(error),
        };
        let damaged = |reason: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a checkpoint file ({reason}); delete it to forget the group's checkpoints",
                    self.path(group).display()
                ),
            )
        };
        let file: CheckpointFile =
            serde_json::from_slice(&text).map_err(|error| damaged(error.to_string()))?;
        file.checkpoints
            .into_iter()
            .map(|(partition, offset)| match partition.parse::<u32>() {
                Ok(number) => Ok((number, offset)),
                Err(_) => Err(damaged(format!("{partition:?} is not a partition number"))),
            })
            .collect()
    }

    pub(crate) fn load(&self, group: &ConsumerGroup) -> io::Result<BTreeMap<u32, u64>> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.read(group)
    }

    /// Merges `updates` into the group's checkpoints, durably; returns them all.
    pub(crate) fn save(
        &self,
        group: &ConsumerGroup,
        updates: &[(u32, u64)],
    ) -> io::Result<BTreeMap<u32, u64>> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut checkpoints = self.read(group)?;
        for (partition, offset) in updates {
            checkpoints.insert(*partition, *offset);
        }
        let file = CheckpointFile {
            checkpoints: checkpoints
                .iter()
                .map(|(partition, offset)| (partition.to_string(), *offset))
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("checkpoints always serialise");
        let path = self.path(group);
        let temporary = path.with_extension("json.tmp");
        let mut handle = File::create(&temporary)?;
        handle.write_all(&bytes)?;
        handle.sync_all()?;
        drop(handle);
        fs::rename(&temporary, &path)?;
        sync_directory(&self.directory)?;
        Ok(checkpoints)
    }

    pub(crate) fn groups(&self) -> io::Result<Vec<ConsumerGroup>> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut groups = Vec::new();
        for entry in fs::read_dir(&self.directory)? {
            let name = entry?.file_name();
            if let Some(group) = name
                .to_str()
                .and_then(|name| name.strip_suffix(".json"))
                .and_then(|name| ConsumerGroup::new(name).ok())
            {
                groups.push(group);
            }
        }
        groups.sort();
        Ok(groups)
    }

    pub(crate) fn delete(&self, group: &ConsumerGroup) -> io::Result<bool> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match fs::remove_file(self.path(group)) {
            Ok(()) => {
                sync_directory(&self.directory)?;
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_follow_the_rule() {
        for good in ["$Default", "g1", "a.b_c-d", &"x".repeat(64)] {
            assert!(ConsumerGroup::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "a b",
            "-x",
            "grüße",
            &"x".repeat(65),
            "a$",
        ] {
            assert!(ConsumerGroup::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checkpoints_merge_persist_list_and_delete() {
        let directory = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(directory.path().join("groups")).unwrap();
        let group = ConsumerGroup::new("g1").unwrap();
        assert!(store.load(&group).unwrap().is_empty());
        store.save(&group, &[(0, 5), (2, 7)]).unwrap();
        let merged = store.save(&group, &[(0, 9)]).unwrap();
        assert_eq!(merged, BTreeMap::from([(0, 9), (2, 7)]));
        let reopened = CheckpointStore::open(directory.path().join("groups")).unwrap();
        assert_eq!(reopened.load(&group).unwrap(), merged);
        assert_eq!(reopened.groups().unwrap(), vec![group.clone()]);
        assert!(reopened.delete(&group).unwrap());
        assert!(!reopened.delete(&group).unwrap());
        assert!(reopened.groups().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_checkpoint_file_is_an_error_naming_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let groups = directory.path().join("groups");
        let store = CheckpointStore::open(groups.clone()).unwrap();
        let group = ConsumerGroup::new("g1").unwrap();
        for (contents, reason) in [
            (&b""[..], "EOF while parsing"),
            (b"{\"checkpoints\": {\"0\": 5", "EOF while parsing"),
            (
                b"{\"checkpoints\": {\"zero\": 5}}",
                "\"zero\" is not a partition number",
            ),
            (b"{\"checkpoints\": {\"0\": -1}}", "invalid value"),
            (b"[1, 2]", "invalid type"),
            (b"\xff\xfe", "expected value"),
        ] {
            std::fs::write(groups.join("g1.json"), contents).unwrap();
            let error = store.load(&group).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            let message = error.to_string();
            assert!(
                message.contains("g1.json is not a checkpoint file") && message.contains(reason),
                "{message}"
            );
            // Saving over a damaged file would silently drop its other partitions: refused too.
            assert!(store.save(&group, &[(0, 1)]).is_err());
        }
    }
}
