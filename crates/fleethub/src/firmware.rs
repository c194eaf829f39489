//! `fleethub firmware`: firmware artifacts (a fleethub extension, docs/firmware.md) through the service SDK:
//! make a signing key, upload an image (hashed and signed on this machine, then streamed to the hub with a
//! progress bar), list, show and delete artifacts, and grant a device a signed download URL.
//!
//! The private key never leaves this machine: `upload --sign-key` sends the image with the JWS it signed.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use fleethub_service::ArtifactUpload;
use fleethub_service::protocol::artifacts::{Artifact, Grant, MAX_GRANT_SECONDS};
use fleethub_service::protocol::firmware::{FirmwareManifest, SigningKey, check_name};
use fleethub_service::protocol::ids::DeviceId;
use indicatif::{ProgressBar, ProgressStyle};
use ring::rand::SecureRandom as _;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub(crate) mod update;

use crate::failure::{ExplainResult as _, Kind, Operation};
use crate::hub::{HUB_HELP, HubArgs};
use crate::output::{Cell, OutputFormat, Palette, Table, or_dash, print_json, write_stdout};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct FirmwareCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: FirmwareAction,
}

#[derive(clap::Subcommand)]
enum FirmwareAction {
    /// Make an Ed25519 key pair for signing firmware manifests (no hub needed)
    ///
    /// Writes PREFIX.key.pem (the private key, PKCS#8, mode 0600: keep it off the hub), PREFIX.pub.pem (the
    /// public key, SPKI) and PREFIX.pub.jwk (the same as a JWK); devices verify with either public form.
    /// Refuses to overwrite an existing file.
    Keygen {
        /// Path prefix of the three files
        #[arg(long, value_name = "PREFIX", default_value = "fleethub-firmware")]
        out: PathBuf,
    },
    /// Upload a firmware image as an artifact (model and version)
    ///
    /// With --sign-key, hashes the image here, signs its manifest with the key here, and uploads both; the
    /// hub checks the image against the manifest. Without it the hub makes an unsigned manifest (agents
    /// configured with a public key refuse such artifacts).
    Upload {
        /// The image
        file: PathBuf,
        /// Which hardware it is for: devices must report it as properties.reported.firmware.model
        #[arg(long, value_name = "MODEL", value_parser = parse_model)]
        model: String,
        /// Its version (letters, digits and . _ - + ~)
        #[arg(long, value_name = "VERSION", value_parser = parse_version)]
        version: String,
        /// Sign the manifest with this private key (PKCS#8 PEM, from `firmware keygen` or OpenSSL)
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
        /// A command the device agent runs after booting the image; exit status 0 commits it
        #[arg(long, value_name = "COMMAND")]
        health_check: Option<String>,
        /// Free text for people
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// List artifacts by model then version
    List {
        /// Only this model's
        #[arg(long, value_name = "MODEL", value_parser = parse_model)]
        model: Option<String>,
    },
    /// Show an artifact: its manifest, whether and by which key it is signed
    Show {
        #[arg(value_parser = parse_model)]
        model: String,
        #[arg(value_parser = parse_version)]
        version: String,
    },
    /// Delete an artifact (its image goes with the last artifact that has the same bytes)
    Delete {
        #[arg(value_parser = parse_model)]
        model: String,
        #[arg(value_parser = parse_version)]
        version: String,
    },
    /// Update a device's firmware: grant it the artifact and invoke firmwareUpdate; --watch follows it
    ///
    /// The device (fleethub-agent, or any app implementing firmwareUpdate) gets
    /// {"fwPackageUri": <signed URL>, "version", "manifest"} and answers at once; with --watch each state it
    /// reports (downloading with progress, applying, completed, failed, rolledBack) is shown as it arrives
    /// from the change feed, and the command fails when the update does not complete.
    Update {
        /// The device
        device: DeviceId,
        /// The version to install
        #[arg(long, value_name = "VERSION", value_parser = parse_version)]
        version: String,
        /// The artifact's model (default: what the device reports as properties.reported.firmware.model)
        #[arg(long, value_name = "MODEL", value_parser = parse_model)]
        model: Option<String>,
        /// Follow the update until it ends
        #[arg(long)]
        watch: bool,
        /// How long the download grant lasts
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        expires: Duration,
        /// With --watch: give up waiting after this long
        #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Entitle a device to download an artifact, and print its signed download URL
    Grant {
        #[arg(value_parser = parse_model)]
        model: String,
        #[arg(value_parser = parse_version)]
        version: String,
        /// The device
        #[arg(long, value_name = "DEVICE_ID")]
        device: DeviceId,
        /// How long the grant and the URL last: seconds, or a number with s, m, h or d (at most 30d)
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        expires: Duration,
    },
}

fn parse_model(text: &str) -> Result<String, String> {
    check_name("model", text)
        .map(|()| text.to_owned())
        .map_err(|error| error.to_string())
}

fn parse_version(text: &str) -> Result<String, String> {
    check_name("version", text)
        .map(|()| text.to_owned())
        .map_err(|error| error.to_string())
}

/// `90`, `90s`, `10m`, `1h`, `2d`: from a second to 30 days.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(index) => text.split_at(index),
        None => (text, "s"),
    };
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: expected seconds or a number with s, m, h or d (e.g. 1h)"
            ));
        }
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .ok_or_else(|| {
            format!("{text:?}: expected seconds or a number with s, m, h or d (e.g. 1h)")
        })?;
    if !(1..=MAX_GRANT_SECONDS).contains(&seconds) {
        return Err(format!("{text:?}: must be from 1s to 30d"));
    }
    Ok(Duration::from_secs(seconds))
}

pub(crate) async fn run(command: FirmwareCommand) -> anyhow::Result<()> {
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    if let FirmwareAction::Keygen { out } = &command.action {
        return keygen(out, format);
    }
    let hub = command.hub.connect().await?;
    match command.action {
        FirmwareAction::Keygen { .. } => unreachable!("handled above"),
        FirmwareAction::Upload {
            file,
            model,
            version,
            sign_key,
            health_check,
            description,
        } => {
            let manifest = match &sign_key {
                Some(key_path) => Some(sign(
                    &file,
                    key_path,
                    &model,
                    &version,
                    health_check.clone(),
                    description.clone(),
                )?),
                None => None,
            };
            let size = fs::metadata(&file)
                .with_context(|| format!("read {}", file.display()))?
                .len();
            let bar = bytes_bar(size, "uploading");
            let progress_bar = bar.clone();
            let signed = manifest.is_some();
            let upload = ArtifactUpload {
                model: model.clone(),
                version: version.clone(),
                file,
                manifest,
                // A signed manifest carries these itself.
                health_check: if signed { None } else { health_check },
                description: if signed { None } else { description },
                progress: Some(Arc::new(move |sent| progress_bar.set_position(sent))),
            };
            let operation = Operation::new(
                Kind::WriteFirmware,
                format!("upload firmware {model} {version}"),
            )
            .on_artifact(&model, &version);
            let result = hub.client.upload_artifact(&upload).await;
            bar.finish_and_clear();
            let artifact = result.or_explain(&hub, &operation).await?;
            print_artifact(format, &palette, &artifact)
        }
        FirmwareAction::List { model } => {
            let operation = Operation::new(Kind::ReadFirmware, "list firmware artifacts");
            let artifacts = hub
                .client
                .list_artifacts(model.as_deref())
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&artifacts),
                OutputFormat::Table if artifacts.is_empty() => write_stdout(
                    "no firmware artifacts: upload one with `fleethub firmware upload FILE --model MODEL --version VERSION`\n",
                ),
                OutputFormat::Table => artifacts_table(&palette, &artifacts).print(&palette),
            }
        }
        FirmwareAction::Show { model, version } => {
            let operation = Operation::new(
                Kind::ReadFirmware,
                format!("read firmware {model} {version}"),
            )
            .on_artifact(&model, &version);
            let artifact = hub
                .client
                .get_artifact(&model, &version)
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_artifact(format, &palette, &artifact)
        }
        FirmwareAction::Delete { model, version } => {
            let operation = Operation::new(
                Kind::WriteFirmware,
                format!("delete firmware {model} {version}"),
            )
            .on_artifact(&model, &version);
            hub.client
                .delete_artifact(&model, &version)
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => Ok(()),
                OutputFormat::Table => {
                    write_stdout(&format!("deleted firmware {model} {version}\n"))
                }
            }
        }
        FirmwareAction::Update {
            device,
            version,
            model,
            watch,
            expires,
            timeout,
        } => {
            let request = update::UpdateRequest {
                device,
                model,
                version,
                grant_for: expires,
                watch,
                timeout,
            };
            update::run(&hub, format, &palette, request).await
        }
        FirmwareAction::Grant {
            model,
            version,
            device,
            expires,
        } => {
            let operation = Operation::new(
                Kind::GrantFirmware,
                format!("grant firmware {model} {version} to device {device}"),
            )
            .on_artifact(&model, &version)
            .on(&device, None);
            let grant = hub
                .client
                .create_grant(&model, &version, &device, expires)
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_grant(format, &grant)
        }
    }
}

/// Writes the key pair; never replaces a file.
fn keygen(prefix: &Path, format: OutputFormat) -> anyhow::Result<()> {
    let with_suffix = |suffix: &str| {
        let mut path = prefix.as_os_str().to_owned();
        path.push(suffix);
        PathBuf::from(path)
    };
    let private_path = with_suffix(".key.pem");
    let public_path = with_suffix(".pub.pem");
    let jwk_path = with_suffix(".pub.jwk");
    for path in [&private_path, &public_path, &jwk_path] {
        if path.exists() {
            bail!(
                "{} exists: keygen never replaces a key; choose another --out PREFIX or move the old files away",
                path.display()
            );
        }
    }
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| anyhow!("the operating system's random source failed"))?;
    let key = SigningKey::from_seed(seed);
    let public = key.public_key();
    let jwk =
        serde_json::to_string_pretty(&public.to_jwk()).expect("a JWK always serialises") + "\n";
    write_new(&private_path, &key.to_pkcs8_pem(), 0o600)?;
    write_new(&public_path, &public.to_spki_pem(), 0o644)?;
    write_new(&jwk_path, &jwk, 0o644)?;
    match format {
        OutputFormat::Json => print_json(&serde_json::json!({
            "keyId": public.key_id(),
            "privateKey": private_path,
            "publicKey": public_path,
            "jwk": jwk_path,
        })),
        OutputFormat::Table => write_stdout(&format!(
            "key {}\nprivate key  {} (keep it secret; it never goes to the hub)\npublic key   {}\nJWK          {}\n",
            public.key_id(),
            private_path.display(),
            public_path.display(),
            jwk_path.display()
        )),
    }
}

fn write_new(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// Hashes `file` (with a progress bar) and signs its manifest with the key at `key_path`.
fn sign(
    file: &Path,
    key_path: &Path,
    model: &str,
    version: &str,
    health_check: Option<String>,
    description: Option<String>,
) -> anyhow::Result<String> {
    let pem = fs::read_to_string(key_path)
        .with_context(|| format!("read the signing key {}", key_path.display()))?;
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(|error| {
        anyhow!(
            "{} is not a usable signing key ({error}): make one with `fleethub firmware keygen`",
            key_path.display()
        )
    })?;
    let mut image = fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    let size = image
        .metadata()
        .with_context(|| format!("read {}", file.display()))?
        .len();
    let bar = bytes_bar(size, "hashing");
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1024 * 1024];
    let mut hashed = 0u64;
    loop {
        let read = image
            .read(&mut buffer)
            .with_context(|| format!("read {}", file.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        hashed += read as u64;
        bar.set_position(hashed);
    }
    bar.finish_and_clear();
    if hashed != size {
        bail!("{} changed while it was being hashed", file.display());
    }
    let manifest = FirmwareManifest {
        model: model.to_owned(),
        version: version.to_owned(),
        sha256: hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
        size,
        created: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc()),
        health_check,
        description,
    };
    key.sign(&manifest)
        .map_err(|error| anyhow!("cannot sign the manifest: {error}"))
}

/// A byte-counting bar on stderr (drawn only on a terminal).
fn bytes_bar(size: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

fn print_artifact(
    format: OutputFormat,
    palette: &Palette,
    artifact: &Artifact,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return print_json(artifact);
    }
    let mut table = Table::unheaded();
    let mut row = |label: &str, value: Cell| {
        table.row(vec![Cell::styled(label, palette.label), value]);
    };
    row("model", artifact.model.as_str().into());
    row("version", artifact.version.as_str().into());
    row("sha256", artifact.sha256.as_str().into());
    row("size", format!("{} bytes", artifact.size).into());
    row(
        "signed",
        match (&artifact.signed, &artifact.key_id) {
            (true, Some(key_id)) => Cell::styled(format!("yes, key {key_id}"), palette.good),
            (true, None) => Cell::styled("yes", palette.good),
            (false, _) => Cell::styled("no (the hub made the manifest)", palette.muted),
        },
    );
    row("created", time_text(artifact.created).into());
    row("uploaded", time_text(artifact.uploaded).into());
    row(
        "health check",
        or_dash(artifact.health_check.clone()).into(),
    );
    row("description", or_dash(artifact.description.clone()).into());
    table.print(palette)
}

fn artifacts_table(palette: &Palette, artifacts: &[Artifact]) -> Table {
    let mut table = Table::new(&["MODEL", "VERSION", "SIZE", "SIGNED", "UPLOADED", "SHA256"]);
    for artifact in artifacts {
        table.row(vec![
            artifact.model.as_str().into(),
            artifact.version.as_str().into(),
            artifact.size.to_string().into(),
            if artifact.signed {
                Cell::styled(
                    artifact.key_id.clone().unwrap_or_else(|| "yes".to_owned()),
                    palette.good,
                )
            } else {
                Cell::styled("no", palette.muted)
            },
            time_text(artifact.uploaded).into(),
            artifact.sha256.get(..16).unwrap_or(&artifact.sha256).into(),
        ]);
    }
    table
}

/// The URL alone in table mode, so that `URL=$(fleethub firmware grant ...)` works.
fn print_grant(format: OutputFormat, grant: &Grant) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(grant),
        OutputFormat::Table => write_stdout(&format!("{}\n", grant.url)),
    }
}

fn time_text(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_else(|_| time.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_units() {
        let cases = [
            ("90", Ok(90)),
            ("90s", Ok(90)),
            ("10m", Ok(600)),
            ("1h", Ok(3600)),
            ("30d", Ok(2_592_000)),
            (" 2h ", Ok(7200)),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_duration(text).map(|duration| duration.as_secs()),
                expected,
                "{text:?}"
            );
        }
        for bad in [
            "",
            "0",
            "31d",
            "1w",
            "h",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
