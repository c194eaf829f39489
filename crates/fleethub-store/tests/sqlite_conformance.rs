//! Runs the store conformance suite against the embedded SQLite backend on a real database file.

use std::path::PathBuf;
use std::sync::Arc;

use fleethub_store::conformance::{StoreFactory, run_all};
use fleethub_store::{SqliteStore, SqliteStoreOptions, Store};

struct SqliteFactory {
    path: PathBuf,
}

impl StoreFactory for SqliteFactory {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(
            SqliteStore::open(&self.path, SqliteStoreOptions::default()).expect("open the store"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_conformance_suite() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let factory = SqliteFactory {
        path: directory.path().join("fleethub.db"),
    };
    run_all(&factory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_fleethub_is_refused() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("fleethub.db");
    {
        let connection = rusqlite::Connection::open(&path).expect("open");
        connection
            .pragma_update(None, "user_version", 999)
            .expect("set version");
    }
    let error = SqliteStore::open(&path, SqliteStoreOptions::default())
        .err()
        .expect("refused");
    assert!(error.to_string().contains("schema version 999"), "{error}");
}
