//! Which hub the client commands talk to and how they trust it: the options every client command takes
//! (`--hub`, `--data-dir`, `--ca`, `--output`), resolved into a [`Hub`] holding a [`ServiceClient`].

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use fleethub_service::protocol::connection_string::ServiceConnectionString;
use fleethub_service::{ConfigError, ServiceClient, ServiceClientOptions};

use crate::local_hub::{self, CA_FILE, DEFAULT_DATA_DIR, OWNER_POLICY};
use crate::output::OutputFormat;

pub(crate) const CONNECTION_STRING_ENV: &str = "FLEETHUB_CONNECTION_STRING";
pub(crate) const DATA_DIR_ENV: &str = "FLEETHUB_DATA_DIR";

/// The heading of the options every client command shares.
const HUB_OPTIONS: &str = "Hub and output options";

/// Shown under every client command's `--help`.
pub(crate) const HUB_HELP: &str = "\
Which hub (the first that applies):
  1. --hub CONNECTION_STRING     a shared access policy's connection string
  2. --data-dir DIR              the local hub of DIR, as its iothubowner policy
  3. FLEETHUB_CONNECTION_STRING
  4. FLEETHUB_DATA_DIR           as --data-dir
  5. ./fleethub-data             if a hub was started there
Which CA: --ca FILE if given, else DIR/ca.pem if it exists (DIR from 2, 4 or 5), else the system's roots
(what Azure IoT Hub needs).
Exit status: 0 done, 1 the operation failed (the message says why and what to do), 2 usage error.";

/// The options of every client command, accepted anywhere after the command group (`fleethub device
/// --hub ... list` and `fleethub device list --hub ...` are the same).
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct HubArgs {
    /// Connection string of a shared access policy: HostName=...;SharedAccessKeyName=...;SharedAccessKey=...
    /// [env: FLEETHUB_CONNECTION_STRING]
    #[arg(long, global = true, value_name = "CONNECTION_STRING", help_heading = HUB_OPTIONS)]
    hub: Option<String>,
    /// Data directory of a local hub (the one given to `fleethub serve`), used when --hub is not given
    /// [env: FLEETHUB_DATA_DIR] [default: ./fleethub-data]
    #[arg(long, global = true, value_name = "DIR", help_heading = HUB_OPTIONS)]
    data_dir: Option<PathBuf>,
    /// PEM file of the CA that signed the hub's certificate [default: DIR/ca.pem when it exists, else the
    /// system's roots]
    #[arg(long, global = true, value_name = "FILE", help_heading = HUB_OPTIONS)]
    ca: Option<PathBuf>,
    /// How to print results: aligned tables for people, or the hub's JSON (REST shapes) for scripts
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Table,
        help_heading = HUB_OPTIONS
    )]
    pub(crate) output: OutputFormat,
}

/// Where the connection string came from, to say so in error messages.
#[derive(Clone, Debug)]
pub(crate) enum HubOrigin {
    Flag,
    Environment,
    DataDir(PathBuf),
}

/// Which certificates the client trusts, to say so when TLS fails.
#[derive(Clone, Debug)]
pub(crate) enum Trust {
    /// `--ca FILE`.
    CaFlag(PathBuf),
    /// `DIR/ca.pem`, picked because it exists.
    DataDirCa(PathBuf),
    SystemRoots,
}

/// A hub to talk to: the client and what the error messages need to know about how it was found.
#[derive(Clone, Debug)]
pub(crate) struct Hub {
    pub(crate) client: ServiceClient,
    pub(crate) origin: HubOrigin,
    pub(crate) trust: Trust,
    /// The policy the connection string names (`SharedAccessKeyName`).
    pub(crate) policy: String,
}

impl HubArgs {
    /// Finds the hub and its CA as [`HUB_HELP`] says, and builds a client for it.
    pub(crate) async fn connect(&self) -> anyhow::Result<Hub> {
        let environment_data_dir = non_empty_env(DATA_DIR_ENV).map(PathBuf::from);
        let data_dir = self
            .data_dir
            .clone()
            .or(environment_data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

        let (connection_string, origin) = if let Some(hub) = &self.hub {
            (hub.clone(), HubOrigin::Flag)
        } else if let Some(explicit) = &self.data_dir {
            (
                local_owner(explicit).await?,
                HubOrigin::DataDir(explicit.clone()),
            )
        } else if let Some(from_environment) = non_empty_env(CONNECTION_STRING_ENV) {
            (from_environment, HubOrigin::Environment)
        } else if local_hub::holds_hub(&data_dir) {
            (
                local_owner(&data_dir).await?,
                HubOrigin::DataDir(data_dir.clone()),
            )
        } else {
            let looked_in = match &environment_data_dir {
                Some(_) => format!("{DATA_DIR_ENV}={} holds none", data_dir.display()),
                None => format!("{} holds none", data_dir.display()),
            };
            return Err(anyhow!(
                "no hub: pass --hub CONNECTION_STRING, set {CONNECTION_STRING_ENV}, or run `fleethub serve --data-dir DIR` ({looked_in})"
            ));
        };

        let (trust, ca_pem) = match &self.ca {
            Some(path) => (Trust::CaFlag(path.clone()), Some(read_ca(path, "--ca")?)),
            None => {
                let candidate = data_dir.join(CA_FILE);
                if candidate.exists() {
                    let pem = read_ca(&candidate, "the data directory's CA")?;
                    (Trust::DataDirCa(candidate), Some(pem))
                } else {
                    (Trust::SystemRoots, None)
                }
            }
        };

        let parsed: ServiceConnectionString = connection_string
            .parse()
            .map_err(|error| invalid_connection_string(&origin, &error))?;
        let policy = parsed.shared_access_key_name.clone();
        let options = ServiceClientOptions {
            ca_pem,
            ..Default::default()
        };
        let client = ServiceClient::new(parsed, options).map_err(|error| match error {
            ConfigError::CaPem { reason } => anyhow!(
                "{} is not a usable CA certificate: {reason}; pass --ca FILE with the PEM of the CA that signed the hub's certificate",
                trust_path(&trust)
            ),
            ConfigError::ConnectionString(error) => invalid_connection_string(&origin, &error),
            other => anyhow::Error::new(other).context("set up the hub client"),
        })?;
        Ok(Hub {
            client,
            origin,
            trust,
            policy,
        })
    }
}

impl Hub {
    /// `HostName` of the connection string, with its port if it has one.
    pub(crate) fn host(&self) -> &str {
        self.client.host_name()
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

async fn local_owner(data_dir: &Path) -> anyhow::Result<String> {
    if !local_hub::holds_hub(data_dir) {
        return Err(anyhow!(
            "no hub: {} holds none; run `fleethub serve --data-dir {}`, or pass --hub CONNECTION_STRING or set {CONNECTION_STRING_ENV}",
            data_dir.display(),
            data_dir.display()
        ));
    }
    // The hub writes its CA after creating its schema and policies: until then the store is being set up,
    // and opening it now would race the hub's own first open.
    if !data_dir.join(CA_FILE).exists() {
        return Err(anyhow!(
            "the hub in {} is still starting (it has not written {CA_FILE} yet): retry once `fleethub serve` logs \"fleethub is serving\"",
            data_dir.display()
        ));
    }
    local_hub::policy_connection_string(data_dir, OWNER_POLICY)
        .await
        .with_context(|| {
            format!(
                "read the {OWNER_POLICY} connection string of the hub in {}",
                data_dir.display()
            )
        })
}

fn read_ca(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|error| {
        anyhow!(
            "cannot read {what} {}: {error}; pass --ca FILE with the PEM of the CA that signed the hub's certificate",
            path.display()
        )
    })
}

fn trust_path(trust: &Trust) -> String {
    match trust {
        Trust::CaFlag(path) | Trust::DataDirCa(path) => path.display().to_string(),
        Trust::SystemRoots => "the system's roots".to_owned(),
    }
}

/// Never repeats the connection string: it holds a key.
fn invalid_connection_string(origin: &HubOrigin, error: &dyn std::fmt::Display) -> anyhow::Error {
    let from = match origin {
        HubOrigin::Flag => "--hub".to_owned(),
        HubOrigin::Environment => CONNECTION_STRING_ENV.to_owned(),
        HubOrigin::DataDir(path) => format!("the data directory {}", path.display()),
    };
    anyhow!(
        "the connection string from {from} is not usable: {error}; it must look like HostName=HOST[:PORT];SharedAccessKeyName=POLICY;SharedAccessKey=KEY (`fleethub connection-string` prints one for a local hub)"
    )
}
