//! A hub's data directory seen from outside the hub: its policies' connection strings (`fleethub
//! connection-string`, and how the client commands find a local hub) and its CA file.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use fleethub_store::{SqliteStore, SqliteStoreOptions, Store};

/// The data directory used when neither `--data-dir` nor `FLEETHUB_DATA_DIR` names one.
pub(crate) const DEFAULT_DATA_DIR: &str = "./fleethub-data";
/// The CA certificate a hub writes into its data directory: the one file clients must trust.
pub(crate) const CA_FILE: &str = "ca.pem";
/// The policy the client commands use on a local hub: it has every right they need.
pub(crate) const OWNER_POLICY: &str = "iothubowner";

#[derive(clap::Args)]
pub(crate) struct ConnectionStringArgs {
    /// The data directory of the hub (the one given to `fleethub serve`).
    #[arg(long, default_value = "./fleethub-data", env = "FLEETHUB_DATA_DIR")]
    data_dir: PathBuf,
    /// Which shared access policy: iothubowner, service, registryRead, registryReadWrite or device.
    #[arg(long, default_value = "iothubowner")]
    policy: String,
}

/// `fleethub connection-string`: prints the policy's connection string.
pub(crate) async fn connection_string(args: ConnectionStringArgs) -> anyhow::Result<()> {
    println!(
        "{}",
        policy_connection_string(&args.data_dir, &args.policy).await?
    );
    Ok(())
}

/// Whether `data_dir` holds a hub's database (a hub was started on it at least once).
pub(crate) fn holds_hub(data_dir: &Path) -> bool {
    data_dir.join(fleethub_hub::DATABASE_FILE).exists()
}

/// `HostName=host[:port];SharedAccessKeyName=policy;SharedAccessKey=primary key` for the hub of `data_dir`,
/// with the host name and HTTPS port its last start recorded (no port when it is 443).
pub(crate) async fn policy_connection_string(
    data_dir: &Path,
    policy_name: &str,
) -> anyhow::Result<String> {
    let database = data_dir.join(fleethub_hub::DATABASE_FILE);
    if !Path::new(&database).exists() {
        bail!(
            "{} holds no hub yet: start one with `fleethub serve --data-dir {}` first",
            data_dir.display(),
            data_dir.display()
        );
    }
    let store = SqliteStore::open(&database, SqliteStoreOptions::default())
        .context("open the hub's store")?;
    let policies = store
        .policies()
        .await
        .context("read the shared access policies")?;
    let Some(policy) = policies
        .iter()
        .find(|policy| policy.key_name == policy_name)
    else {
        let names: Vec<&str> = policies
            .iter()
            .map(|policy| policy.key_name.as_str())
            .collect();
        bail!(
            "no shared access policy {:?}; this hub has: {}",
            policy_name,
            names.join(", ")
        );
    };
    let hostname = store
        .get_meta(fleethub_hub::META_HOSTNAME)
        .await?
        .unwrap_or_else(|| "localhost".into());
    let port = store
        .get_meta(fleethub_hub::META_HTTPS_PORT)
        .await?
        .unwrap_or_else(|| "443".into());
    let host = if port == "443" {
        hostname
    } else {
        format!("{hostname}:{port}")
    };
    Ok(format!(
        "HostName={host};SharedAccessKeyName={};SharedAccessKey={}",
        policy.key_name, policy.primary_key
    ))
}

/// The MQTT port the hub of `data_dir` recorded at its last start, which devices dial; `None` when it
/// recorded none.
pub(crate) async fn mqtt_port(data_dir: &Path) -> anyhow::Result<Option<u16>> {
    let database = data_dir.join(fleethub_hub::DATABASE_FILE);
    let store = SqliteStore::open(&database, SqliteStoreOptions::default())
        .context("open the hub's store")?;
    let port = store
        .get_meta(fleethub_hub::META_MQTT_PORT)
        .await
        .context("read the hub's MQTT port")?;
    Ok(port.and_then(|port| port.parse().ok()))
}
