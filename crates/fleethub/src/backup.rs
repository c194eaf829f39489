//! `fleethub backup` and `fleethub restore`: a consistent copy of a hub's data directory, taken while the hub
//! serves it (without its lock), and laid out again in a new directory after checking every file's SHA-256.
//!
//! # Why the copy is consistent
//! The backup runs outside the hub, so it relies only on the on-disk contracts of the two stores:
//! - **Event log first.** Consumer groups' checkpoint files are copied first (each is replaced atomically,
//!   and a checkpoint only names an offset already committed, so it never points past what is copied next).
//!   Then the length of every segment (and `state.json`) is read in two passes until two passes agree: the
//!   segments only grow, so equal passes mean those lengths were all on disk at one instant between them.
//!   Each segment is copied up to that length, which is exactly what a crash at that instant would have left;
//!   the log's recovery at open (CRC-checked tail, removal of a partly written last batch) makes it whole.
//!   Every event acknowledged before the backup started was fdatasynced before it, so it is in the copy.
//! - **Database second**, with `VACUUM INTO`: one SQLite read transaction over the WAL database, so writers
//!   go on and the copy is one committed state. Taken after the log, the log's upstream position is never
//!   ahead of the copied change feed, so the restored hub's pump appends the feed records the log lacks and
//!   skips none.
//! - **Blobs last**: the firmware images the copied database names. Blobs are immutable and named by their
//!   hash; one deleted between the two steps fails the backup (run it again) rather than copy a hole.
//! - Everything else (CA and server certificate and key, the URL-signing key, routing files) is copied as is.
//!
//! `backup.json` lists every file with its size and SHA-256; `restore` checks them all while copying into a
//! staging directory next to the target and renames it into place only when every file matched.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, IsTerminal as _, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::output::{OutputFormat, print_json, write_stdout};

const MANIFEST_FILE: &str = "backup.json";
const MANIFEST_FORMAT: u32 = 1;
const DATABASE_FILE: &str = fleethub_hub::DATABASE_FILE;
const EVENTS_DIRECTORY: &str = fleethub_hub::EVENTS_DIRECTORY;
const ARTIFACTS_DIRECTORY: &str = "artifacts";
/// Files of a running hub that are never copied: its lock and SQLite's live side files (the database is
/// copied through SQLite).
const NEVER_COPIED: &[&str] = &[
    "fleethub.lock",
    "fleethub.db-wal",
    "fleethub.db-shm",
    "fleethub.db-journal",
];
/// How many pairs of passes over the event log's segment lengths before settling for the last one.
const LENGTH_PASSES: usize = 200;

#[derive(clap::Args)]
pub(crate) struct BackupArgs {
    /// The hub's data directory (the hub may be serving it)
    #[arg(long, env = "FLEETHUB_DATA_DIR")]
    data_dir: PathBuf,
    /// A new (or empty) directory for the backup
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
    /// A directory written by `fleethub backup`
    #[arg(long)]
    from: PathBuf,
    /// A new (or empty) data directory for the restored hub
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

/// `backup.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    format: u32,
    /// RFC 3339, when the backup started.
    created: String,
    hub_version: String,
    /// The database's `PRAGMA user_version` (migrations applied).
    db_schema_version: i64,
    /// Whether the event log's segment lengths were read at one instant (see the module docs); when not,
    /// the copy still holds every event acknowledged before the backup started.
    event_log_settled: bool,
    files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ManifestFile {
    /// Relative, with `/` separators.
    path: String,
    size: u64,
    sha256: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    directory: &'a Path,
    files: usize,
    bytes: u64,
    db_schema_version: i64,
    event_log_settled: bool,
}

pub(crate) async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let output = args.output;
    let (out, manifest) = tokio::task::spawn_blocking(move || {
        let manifest = take_backup(&args.data_dir, &args.out)?;
        anyhow::Ok((args.out, manifest))
    })
    .await
    .context("run the backup")??;
    print_summary(&out, &manifest, output, "backed up")
}

pub(crate) async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let output = args.output;
    let (target, manifest) = tokio::task::spawn_blocking(move || {
        let manifest = restore_backup(&args.from, &args.data_dir)?;
        anyhow::Ok((args.data_dir, manifest))
    })
    .await
    .context("run the restore")??;
    print_summary(&target, &manifest, output, "restored")
}

fn print_summary(
    directory: &Path,
    manifest: &Manifest,
    output: OutputFormat,
    verb: &str,
) -> anyhow::Result<()> {
    let summary = Summary {
        directory,
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|file| file.size).sum(),
        db_schema_version: manifest.db_schema_version,
        event_log_settled: manifest.event_log_settled,
    };
    match output {
        OutputFormat::Json => print_json(&summary),
        OutputFormat::Table => write_stdout(&format!(
            "{verb} {} files ({} bytes, schema version {}) in {}\n",
            summary.files,
            summary.bytes,
            summary.db_schema_version,
            directory.display()
        )),
    }
}

/// Takes the backup of `data_dir` into `out` (created; must be new or empty).
fn take_backup(data_dir: &Path, out: &Path) -> anyhow::Result<Manifest> {
    let created = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .context("format the backup time")?;
    if !data_dir.join(DATABASE_FILE).is_file() {
        bail!(
            "{} holds no hub database ({DATABASE_FILE}): is it a fleethub data directory?",
            data_dir.display()
        );
    }
    prepare_empty_directory(out)?;
    let bar = progress_bar();
    let mut copier = Copier {
        out: out.to_owned(),
        files: Vec::new(),
        bar: bar.clone(),
    };

    let event_log_settled = copy_event_log(data_dir, &mut copier)?;

    bar.set_message("database");
    let database_copy = out.join(DATABASE_FILE);
    let (db_schema_version, blobs) = copy_database(&data_dir.join(DATABASE_FILE), &database_copy)?;
    copier.record_existing(DATABASE_FILE)?;

    bar.set_message("artifacts");
    copy_artifacts(data_dir, &blobs, &mut copier)?;

    bar.set_message("certificates and settings");
    copy_the_rest(data_dir, &mut copier)?;
    bar.finish_and_clear();

    let mut files = copier.files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        created,
        hub_version: env!("CARGO_PKG_VERSION").to_owned(),
        db_schema_version,
        event_log_settled,
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest).context("encode the manifest")?;
    write_durably(&out.join(MANIFEST_FILE), &text)?;
    sync_tree_directories(out)?;
    Ok(manifest)
}

/// The event log (see the module docs for the order). Returns whether the lengths were read at one instant.
fn copy_event_log(data_dir: &Path, copier: &mut Copier) -> anyhow::Result<bool> {
    let events = data_dir.join(EVENTS_DIRECTORY);
    if !events.is_dir() {
        return Ok(true);
    }
    copier.bar.set_message("event log");
    let groups = events.join("consumer-groups");
    if groups.is_dir() {
        for entry in read_directory(&groups)? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".json") {
                // Replaced atomically by the hub, so one read sees a whole file.
                let bytes = read_file(&entry.path())?;
                copier.write(
                    &format!("{EVENTS_DIRECTORY}/consumer-groups/{name}"),
                    &bytes,
                )?;
            }
        }
    }
    let (lengths, state, settled) = settled_lengths(&events)?;
    if !settled {
        tracing::warn!(
            "the event log never paused between two passes over its segment lengths; copying the last pass"
        );
    }
    let meta = read_file(&events.join("log.json"))?;
    copier.write(&format!("{EVENTS_DIRECTORY}/log.json"), &meta)?;
    if let Some(state) = state {
        copier.write(&format!("{EVENTS_DIRECTORY}/state.json"), &state)?;
    }
    copier.bar.inc_length(lengths.values().sum());
    for (relative, length) in &lengths {
        let source = events.join(relative);
        let file = match File::open(&source) {
            Ok(file) => file,
            // Retention deleted a whole old segment since the pass: it is gone from the live log too.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("open {}", source.display()));
            }
        };
        copier.copy_from(
            &format!("{EVENTS_DIRECTORY}/{relative}"),
            file.take(*length),
            &source,
        )?;
    }
    Ok(settled)
}

type SegmentLengths = BTreeMap<String, u64>;

/// Segment lengths (by path relative to `events/`) and `state.json`, read twice until both reads agree.
fn settled_lengths(events: &Path) -> anyhow::Result<(SegmentLengths, Option<Vec<u8>>, bool)> {
    let mut previous = segment_lengths(events)?;
    for _ in 0..LENGTH_PASSES {
        let next = segment_lengths(events)?;
        if next == previous {
            return Ok((next.0, next.1, true));
        }
        previous = next;
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok((previous.0, previous.1, false))
}

fn segment_lengths(events: &Path) -> anyhow::Result<(SegmentLengths, Option<Vec<u8>>)> {
    let mut lengths = BTreeMap::new();
    let partitions = events.join("partitions");
    for partition in read_directory(&partitions)? {
        if !partition.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let partition_name = partition.file_name().to_string_lossy().into_owned();
        for segment in read_directory(&partition.path())? {
            let name = segment.file_name().to_string_lossy().into_owned();
            // Index files are a cache the log rebuilds when they do not match their segment.
            if !name.ends_with(".log") {
                continue;
            }
            let length = match segment.metadata() {
                Ok(metadata) => metadata.len(),
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("read {}", segment.path().display()));
                }
            };
            lengths.insert(format!("partitions/{partition_name}/{name}"), length);
        }
    }
    let state = match fs::read(events.join("state.json")) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(error).context("read the event log's state.json"),
    };
    Ok((lengths, state))
}

/// `VACUUM INTO` the copy; returns its schema version and the blobs its artifacts name.
fn copy_database(source: &Path, copy: &Path) -> anyhow::Result<(i64, Vec<String>)> {
    let connection = rusqlite::Connection::open_with_flags(
        source,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {}", source.display()))?;
    connection
        .busy_timeout(Duration::from_secs(30))
        .context("set the database's busy timeout")?;
    // SQLite accepts an empty target, and keeps its owner-only mode.
    drop(create_private_file(copy)?);
    let copy_text = copy
        .to_str()
        .context("the backup directory's path is not UTF-8")?;
    connection
        .execute("VACUUM INTO ?1", [copy_text])
        .with_context(|| format!("copy {} with VACUUM INTO", source.display()))?;
    drop(connection);
    File::open(copy)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("sync {}", copy.display()))?;

    let copied =
        rusqlite::Connection::open_with_flags(copy, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("open {}", copy.display()))?;
    let integrity: String = copied
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .context("check the copied database")?;
    if integrity != "ok" {
        bail!("the copied database fails its integrity check: {integrity}");
    }
    let schema_version: i64 = copied
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .context("read the database's schema version")?;
    let has_artifacts: bool = copied
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'artifacts')",
            [],
            |row| row.get(0),
        )
        .context("look for the artifacts table")?;
    let mut blobs = Vec::new();
    if has_artifacts {
        let mut statement = copied
            .prepare("SELECT DISTINCT sha256 FROM artifacts")
            .context("list the artifacts' blobs")?;
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .context("list the artifacts' blobs")?;
        for row in rows {
            blobs.push(row.context("list the artifacts' blobs")?);
        }
    }
    Ok((schema_version, blobs))
}

/// `artifacts/`: the blobs the copied database names, and the other files (the URL key), never `tmp/`.
fn copy_artifacts(data_dir: &Path, blobs: &[String], copier: &mut Copier) -> anyhow::Result<()> {
    let root = data_dir.join(ARTIFACTS_DIRECTORY);
    if !root.is_dir() {
        if blobs.is_empty() {
            return Ok(());
        }
        bail!(
            "{} is missing, yet the database names firmware images",
            root.display()
        );
    }
    for entry in read_directory(&root)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "tmp" || name == "blobs" {
            continue;
        }
        copier.copy_tree(&entry.path(), &format!("{ARTIFACTS_DIRECTORY}/{name}"))?;
    }
    for sha256 in blobs {
        let hex = sha256.chars().all(|c| c.is_ascii_hexdigit());
        if !hex || sha256.is_empty() {
            bail!("the database names a blob with an invalid name: {sha256:?}");
        }
        let source = root.join("blobs").join(sha256);
        let file = File::open(&source).with_context(|| {
            format!(
                "open {} (an artifact deleted during the backup? run it again)",
                source.display()
            )
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        copier.bar.inc_length(size);
        copier.copy_from(
            &format!("{ARTIFACTS_DIRECTORY}/blobs/{sha256}"),
            file,
            &source,
        )?;
    }
    Ok(())
}

/// Everything at the top of the data directory not handled above: certificates and keys, routing files.
fn copy_the_rest(data_dir: &Path, copier: &mut Copier) -> anyhow::Result<()> {
    for entry in read_directory(data_dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == DATABASE_FILE
            || name == EVENTS_DIRECTORY
            || name == ARTIFACTS_DIRECTORY
            || NEVER_COPIED.contains(&name.as_str())
        {
            continue;
        }
        copier.copy_tree(&entry.path(), &name)?;
    }
    Ok(())
}

/// Writes files under the backup directory and remembers their size and hash.
struct Copier {
    out: PathBuf,
    files: Vec<ManifestFile>,
    bar: ProgressBar,
}

impl Copier {
    fn write(&mut self, relative: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.copy_from(relative, bytes, Path::new(relative))
    }

    fn copy_from(
        &mut self,
        relative: &str,
        reader: impl io::Read,
        source: &Path,
    ) -> anyhow::Result<()> {
        let target = self.out.join(relative);
        let (size, sha256) = copy_hashing(reader, &target, source, &self.bar)?;
        self.files.push(ManifestFile {
            path: relative.to_owned(),
            size,
            sha256,
        });
        Ok(())
    }

    /// A file already written under the backup directory (the database copy).
    fn record_existing(&mut self, relative: &str) -> anyhow::Result<()> {
        let path = self.out.join(relative);
        let (size, sha256) = hash_file(&path)?;
        self.files.push(ManifestFile {
            path: relative.to_owned(),
            size,
            sha256,
        });
        Ok(())
    }

    fn copy_tree(&mut self, source: &Path, relative: &str) -> anyhow::Result<()> {
        let kind = fs::symlink_metadata(source)
            .with_context(|| format!("read {}", source.display()))?
            .file_type();
        if kind.is_dir() {
            for entry in read_directory(source)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                self.copy_tree(&entry.path(), &format!("{relative}/{name}"))?;
            }
        } else if kind.is_file() {
            let file = match File::open(source) {
                Ok(file) => file,
                // Gone since the listing (a temporary file the hub replaced): nothing to keep.
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(error) => {
                    return Err(error).with_context(|| format!("open {}", source.display()));
                }
            };
            self.bar
                .inc_length(file.metadata().map(|m| m.len()).unwrap_or(0));
            self.copy_from(relative, file, source)?;
        }
        Ok(())
    }
}

/// Copies `reader` to `target` (created with its parents, synced), returning the size and SHA-256 copied.
fn copy_hashing(
    mut reader: impl io::Read,
    target: &Path,
    source: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<(u64, String)> {
    if let Some(parent) = target.parent() {
        create_private_directory(parent)?;
    }
    let mut file = create_private_file(target)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error).with_context(|| format!("read {}", source.display())),
        };
        hasher.update(&buffer[..read]);
        file.write_all(&buffer[..read])
            .with_context(|| format!("write {}", target.display()))?;
        size += read as u64;
        bar.inc(read as u64);
    }
    file.sync_all()
        .with_context(|| format!("sync {}", target.display()))?;
    Ok((size, hex(&hasher.finalize())))
}

fn hash_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let size =
        io::copy(&mut file, &mut hasher).with_context(|| format!("read {}", path.display()))?;
    Ok((size, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Restores `from` into `data_dir` (new or empty): every file is checked against the manifest while it is
/// copied into a staging directory, which becomes `data_dir` only when all matched.
fn restore_backup(from: &Path, data_dir: &Path) -> anyhow::Result<Manifest> {
    let manifest_path = from.join(MANIFEST_FILE);
    let text = fs::read(&manifest_path).with_context(|| {
        format!(
            "read {} (is {} a backup made by `fleethub backup`?)",
            manifest_path.display(),
            from.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("parse {}", manifest_path.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        bail!(
            "{} has format {}, this fleethub reads format {MANIFEST_FORMAT}",
            manifest_path.display(),
            manifest.format
        );
    }
    if directory_has_entries(data_dir)? {
        bail!(
            "{} is not empty: restore only into a new or empty directory",
            data_dir.display()
        );
    }
    let parent = match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".fleethub-restore-")
        .tempdir_in(&parent)
        .with_context(|| format!("create a staging directory in {}", parent.display()))?;

    let bar = progress_bar();
    bar.set_length(manifest.files.iter().map(|file| file.size).sum());
    bar.set_message("restoring");
    for entry in &manifest.files {
        let relative = safe_relative_path(&entry.path)?;
        let source = from.join(&relative);
        let file = File::open(&source).with_context(|| format!("open {}", source.display()))?;
        let (size, sha256) = copy_hashing(file, &staging.path().join(&relative), &source, &bar)?;
        if size != entry.size || sha256 != entry.sha256 {
            bail!(
                "backup file {} does not match the manifest (expected {} bytes with sha256 {}, found {size} bytes \
                 with sha256 {sha256}): the backup is damaged or was changed",
                entry.path,
                entry.size,
                entry.sha256
            );
        }
    }
    bar.finish_and_clear();
    sync_tree_directories(staging.path())?;

    // Checked again: nobody may have started using the directory while the files were copied.
    if data_dir.exists() {
        fs::remove_dir(data_dir).with_context(|| {
            format!(
                "{} is not empty: restore only into a new or empty directory",
                data_dir.display()
            )
        })?;
    }
    let staging = staging.keep();
    fs::rename(&staging, data_dir)
        .with_context(|| format!("move {} to {}", staging.display(), data_dir.display()))?;
    sync_directory(&parent)?;
    Ok(manifest)
}

/// A manifest path as a relative path that stays inside the directory (a manifest is outside input).
fn safe_relative_path(path: &str) -> anyhow::Result<PathBuf> {
    let relative = PathBuf::from(path);
    let normal = relative
        .components()
        .all(|component| matches!(component, Component::Normal(_)));
    if path.is_empty() || !normal || path == MANIFEST_FILE {
        bail!("the manifest names an unsafe path: {path:?}");
    }
    Ok(relative)
}

/// Creates `directory` or checks it is empty.
fn prepare_empty_directory(directory: &Path) -> anyhow::Result<()> {
    if directory_has_entries(directory)? {
        bail!(
            "{} is not empty: write a backup into a new or empty directory",
            directory.display()
        );
    }
    create_private_directory(directory)
}

fn directory_has_entries(directory: &Path) -> anyhow::Result<bool> {
    match fs::read_dir(directory) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).with_context(|| format!("read {}", directory.display())),
    }
}

fn read_directory(directory: &Path) -> anyhow::Result<Vec<fs::DirEntry>> {
    let entries =
        fs::read_dir(directory).with_context(|| format!("read {}", directory.display()))?;
    let mut all = Vec::new();
    for entry in entries {
        all.push(entry.with_context(|| format!("read {}", directory.display()))?);
    }
    all.sort_by_key(|entry| entry.file_name());
    Ok(all)
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// A new file only its owner can read: a backup holds the CA key, device keys and policies.
fn create_private_file(path: &Path) -> anyhow::Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))
}

fn create_private_directory(path: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("create {}", path.display()))
}

fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = create_private_file(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

fn sync_directory(directory: &Path) -> anyhow::Result<()> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .with_context(|| format!("sync {}", directory.display()))
}

fn sync_tree_directories(directory: &Path) -> anyhow::Result<()> {
    for entry in read_directory(directory)? {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            sync_tree_directories(&entry.path())?;
        }
    }
    sync_directory(directory)
}

/// Bytes copied, on stderr when it is a terminal.
fn progress_bar() -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:26} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("the template is valid"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_stay_inside_the_directory() {
        for (path, safe) in [
            ("fleethub.db", true),
            ("events/partitions/0/00000000000000000000.log", true),
            ("", false),
            ("/etc/passwd", false),
            ("../outside", false),
            ("events/../../outside", false),
            ("./ca.pem", false),
            ("backup.json", false),
        ] {
            assert_eq!(safe_relative_path(path).is_ok(), safe, "{path:?}");
        }
    }

    #[test]
    fn lengths_read_twice_agree_on_a_quiet_log() {
        let events = tempfile::tempdir().unwrap();
        let partition = events.path().join("partitions/0");
        fs::create_dir_all(&partition).unwrap();
        fs::write(partition.join("00000000000000000000.log"), b"abc").unwrap();
        fs::write(partition.join("00000000000000000000.index"), b"ignored").unwrap();
        let (lengths, state, settled) = settled_lengths(events.path()).unwrap();
        assert!(settled);
        assert_eq!(state, None);
        assert_eq!(
            lengths.into_iter().collect::<Vec<_>>(),
            vec![("partitions/0/00000000000000000000.log".to_owned(), 3)]
        );
    }
}
