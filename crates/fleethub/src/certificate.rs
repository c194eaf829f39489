//! `fleethub certificate`: X.509 CA certificates for device authentication (Azure's certificates API,
//! like `az iot hub certificate`): upload, list, show, delete, the verification code and the proof of
//! possession; and, for tests and trials, making a CA and device certificates locally (`create-ca`,
//! `create-device`, which print the thumbprints `device create --auth self-signed` takes).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use fleethub_protocol::certificates::{thumbprint_sha1, thumbprint_sha256};
use fleethub_service::protocol::certificates::CertificateDescription;
use fleethub_service::protocol::ids::ETag;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::failure::{ExplainResult as _, Kind, Operation};
use crate::hub::{HUB_HELP, Hub, HubArgs};
use crate::output::{Cell, OutputFormat, Palette, Table, or_dash, print_json, write_stdout};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct CertificateCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: CertificateAction,
}

#[derive(clap::Subcommand)]
enum CertificateAction {
    /// Upload a CA certificate (PEM) under NAME; devices with `--auth ca` chain to it once it is verified
    Upload {
        /// 1 to 64 letters, digits, '-', '.', '_'
        name: String,
        /// The CA certificate, PEM
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Mark it verified without proof of possession (as Azure allows)
        #[arg(long)]
        verified: bool,
        /// Replace the certificate with this etag (`*` for any) instead of creating it
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
    },
    /// List the CA certificates
    List,
    /// Show a CA certificate: subject, thumbprint, expiry, whether verified, etag
    Show {
        name: String,
        /// Also print the certificate's PEM
        #[arg(long)]
        pem: bool,
    },
    /// Delete a CA certificate: devices that chain only to it cannot connect any more
    Delete {
        name: String,
        /// Delete only if its etag is still this one
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
    },
    /// Print a fresh verification code: make a certificate whose subject CN is the code, sign it with the
    /// CA's key, and pass it to `certificate verify`
    VerifyCode {
        name: String,
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
    },
    /// Prove possession of the CA's key: with --file, a certificate whose subject CN is the verification
    /// code, signed by the CA's key; with --ca-key, this command gets a code and makes that certificate
    Verify {
        name: String,
        /// The verification certificate, PEM
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "ca_key",
            conflicts_with = "ca_key"
        )]
        file: Option<PathBuf>,
        /// The CA's private key (PEM): get a code and sign the verification certificate here
        #[arg(long, value_name = "FILE")]
        ca_key: Option<PathBuf>,
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
    },
    /// Make a CA certificate and key for trials (no hub needed): upload it, then `verify --ca-key`
    CreateCa {
        /// The subject CN
        #[arg(long, default_value = "fleethub test CA")]
        subject: String,
        /// Where to write the certificate (PEM)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Where to write the private key (PEM, readable by the owner only); neither file may exist
        #[arg(long, value_name = "FILE")]
        key_out: PathBuf,
        /// Days it is valid
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Make a device certificate and key (subject CN = DEVICE_ID) for trials (no hub needed): self-signed,
    /// or signed by a CA with --ca-cert/--ca-key; prints its SHA-1 and SHA-256 thumbprints
    CreateDevice {
        device_id: String,
        /// Where to write the certificate (PEM)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Where to write the private key (PEM, readable by the owner only); neither file may exist
        #[arg(long, value_name = "FILE")]
        key_out: PathBuf,
        /// Sign with this CA certificate (PEM) instead of self-signing; needs --ca-key
        #[arg(long, value_name = "FILE", requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The CA's private key (PEM)
        #[arg(long, value_name = "FILE", requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Days it is valid
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

pub(crate) async fn run(command: CertificateCommand) -> anyhow::Result<()> {
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    match command.action {
        CertificateAction::CreateCa {
            subject,
            out,
            key_out,
            days,
        } => {
            refuse_existing(&[&out, &key_out])?;
            let key = KeyPair::generate().context("generate a key")?;
            let certificate = ca_params(&subject, days)
                .self_signed(&key)
                .context("make the CA certificate")?;
            write_new(&key_out, &key.serialize_pem(), PRIVATE_KEY_MODE)?;
            write_new(&out, &certificate.pem(), CERTIFICATE_MODE)?;
            print_made(format, &palette, &out, certificate.der())
        }
        CertificateAction::CreateDevice {
            device_id,
            out,
            key_out,
            ca_cert,
            ca_key,
            days,
        } => {
            refuse_existing(&[&out, &key_out])?;
            let key = KeyPair::generate().context("generate a key")?;
            let params = leaf_params(&device_id, days);
            let certificate = match (ca_cert, ca_key) {
                (Some(ca_cert), Some(ca_key)) => {
                    let issuer = read_issuer(&ca_cert, &ca_key)?;
                    params.signed_by(&key, &issuer)
                }
                _ => params.self_signed(&key),
            }
            .context("make the device certificate")?;
            write_new(&key_out, &key.serialize_pem(), PRIVATE_KEY_MODE)?;
            write_new(&out, &certificate.pem(), CERTIFICATE_MODE)?;
            print_made(format, &palette, &out, certificate.der())
        }
        action => run_on_hub(command.hub.connect().await?, action, format, &palette).await,
    }
}

async fn run_on_hub(
    hub: Hub,
    action: CertificateAction,
    format: OutputFormat,
    palette: &Palette,
) -> anyhow::Result<()> {
    match action {
        CertificateAction::Upload {
            name,
            file,
            verified,
            etag,
        } => {
            let pem = read_file(&file)?;
            let operation =
                Operation::new(Kind::WriteIdentity, format!("upload CA certificate {name}"));
            let etag = etag.map(ETag::new);
            let uploaded = hub
                .client
                .upload_ca_certificate(&name, &pem, verified, etag.as_ref())
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_certificate(format, palette, &uploaded, false)
        }
        CertificateAction::List => {
            let operation = Operation::new(Kind::ReadIdentity, "list CA certificates");
            let certificates = hub
                .client
                .list_ca_certificates()
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&certificates),
                OutputFormat::Table if certificates.is_empty() => write_stdout(
                    "no CA certificates: upload one with `fleethub certificate upload NAME --file ca.pem`\n",
                ),
                OutputFormat::Table => {
                    let mut table =
                        Table::new(&["NAME", "SUBJECT", "VERIFIED", "EXPIRY", "THUMBPRINT"]);
                    for certificate in &certificates {
                        let properties = &certificate.properties;
                        table.row(vec![
                            certificate.name.clone().into(),
                            or_dash(properties.subject.clone()).into(),
                            verified_text(properties.is_verified).into(),
                            or_dash(properties.expiry.clone()).into(),
                            or_dash(properties.thumbprint.clone()).into(),
                        ]);
                    }
                    table.print(palette)
                }
            }
        }
        CertificateAction::Show { name, pem } => {
            let operation =
                Operation::new(Kind::ReadIdentity, format!("read CA certificate {name}"));
            let certificate = hub
                .client
                .get_ca_certificate(&name)
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_certificate(format, palette, &certificate, pem)
        }
        CertificateAction::Delete { name, etag } => {
            let operation =
                Operation::new(Kind::WriteIdentity, format!("delete CA certificate {name}"));
            let etag = etag.map(ETag::new);
            hub.client
                .delete_ca_certificate(&name, etag.as_ref())
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&json!({"deleted": name})),
                OutputFormat::Table => write_stdout(&format!("deleted CA certificate {name}\n")),
            }
        }
        CertificateAction::VerifyCode { name, etag } => {
            let certificate = generate_code(&hub, &name, etag).await?;
            match format {
                OutputFormat::Json => print_json(&certificate),
                OutputFormat::Table => write_stdout(&format!(
                    "{}\n",
                    certificate
                        .properties
                        .verification_code
                        .as_deref()
                        .unwrap_or_default()
                )),
            }
        }
        CertificateAction::Verify {
            name,
            file,
            ca_key,
            etag,
        } => {
            let (certificate_pem, etag) = match (file, ca_key) {
                (Some(file), _) => (read_file(&file)?, etag.map(ETag::new)),
                (None, Some(ca_key)) => {
                    let generated = generate_code(&hub, &name, etag).await?;
                    let code = generated
                        .properties
                        .verification_code
                        .clone()
                        .ok_or_else(|| anyhow!("the hub answered no verification code"))?;
                    let ca_pem = generated.properties.certificate.clone().ok_or_else(|| {
                        anyhow!("the hub answered the CA certificate without its PEM")
                    })?;
                    let key = read_key(&ca_key)?;
                    let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).with_context(|| {
                        format!("read CA certificate {name} as the hub keeps it")
                    })?;
                    let proof = leaf_params(&code, 1)
                        .signed_by(&KeyPair::generate().context("generate a key")?, &issuer)
                        .context("make the verification certificate")?;
                    (proof.pem(), Some(ETag::new(generated.etag)))
                }
                (None, None) => unreachable!("clap requires --file or --ca-key"),
            };
            let operation =
                Operation::new(Kind::WriteIdentity, format!("verify CA certificate {name}"));
            let verified = hub
                .client
                .verify_ca_certificate(&name, etag.as_ref(), &certificate_pem)
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_certificate(format, palette, &verified, false)
        }
        CertificateAction::CreateCa { .. } | CertificateAction::CreateDevice { .. } => {
            unreachable!("made locally in `run`")
        }
    }
}

async fn generate_code(
    hub: &Hub,
    name: &str,
    etag: Option<String>,
) -> anyhow::Result<CertificateDescription> {
    let operation = Operation::new(
        Kind::WriteIdentity,
        format!("generate a verification code for CA certificate {name}"),
    );
    let etag = etag.map(ETag::new);
    hub.client
        .generate_verification_code(name, etag.as_ref())
        .await
        .or_explain(hub, &operation)
        .await
}

fn verified_text(is_verified: Option<bool>) -> &'static str {
    match is_verified {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

fn print_certificate(
    format: OutputFormat,
    palette: &Palette,
    certificate: &CertificateDescription,
    with_pem: bool,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return print_json(certificate);
    }
    let properties = &certificate.properties;
    let mut table = Table::unheaded();
    let mut rows = vec![
        ("name", certificate.name.clone()),
        ("subject", or_dash(properties.subject.clone())),
        ("verified", verified_text(properties.is_verified).to_owned()),
        ("thumbprint", or_dash(properties.thumbprint.clone())),
        ("expiry", or_dash(properties.expiry.clone())),
        ("created", or_dash(properties.created.clone())),
        ("updated", or_dash(properties.updated.clone())),
        ("etag", certificate.etag.clone()),
    ];
    if let Some(code) = &properties.verification_code {
        rows.push(("verification code", code.clone()));
    }
    for (label, value) in rows {
        table.row(vec![Cell::styled(label, palette.label), value.into()]);
    }
    table.print(palette)?;
    match (with_pem, &properties.certificate) {
        (true, Some(pem)) => write_stdout(pem),
        _ => Ok(()),
    }
}

/// What `create-ca` and `create-device` made: the file and the thumbprints the registry takes.
fn print_made(
    format: OutputFormat,
    palette: &Palette,
    path: &Path,
    der: &[u8],
) -> anyhow::Result<()> {
    let sha1 = thumbprint_sha1(der);
    let sha256 = thumbprint_sha256(der);
    match format {
        OutputFormat::Json => print_json(&json!({
            "certificate": path.display().to_string(),
            "sha1Thumbprint": sha1,
            "sha256Thumbprint": sha256,
        })),
        OutputFormat::Table => {
            let mut table = Table::unheaded();
            for (label, value) in [
                ("certificate", path.display().to_string()),
                ("SHA-1 thumbprint", sha1),
                ("SHA-256 thumbprint", sha256),
            ] {
                table.row(vec![Cell::styled(label, palette.label), value.into()]);
            }
            table.print(palette)
        }
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // An hour back, so that a clock slightly behind still accepts it at once.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days.max(1));
}

fn ca_params(subject: &str, days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, subject);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    params
}

fn leaf_params(common_name: &str, days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, days);
    params
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// Private keys are readable by their owner only, whatever the umask.
const PRIVATE_KEY_MODE: u32 = 0o600;
const CERTIFICATE_MODE: u32 = 0o644;

/// `create-ca` and `create-device` never replace a file (a key overwritten is a CA or device lost): checked
/// for all outputs before anything is made, so a refusal leaves no half-written pair.
fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    for path in paths {
        if path.exists() {
            bail!(
                "{} exists: certificate and key files are never replaced; choose another path or move the old file away",
                path.display()
            );
        }
    }
    Ok(())
}

/// Creates `path` with `mode` (a file that appeared since [`refuse_existing`] is still not replaced).
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

fn read_key(path: &Path) -> anyhow::Result<KeyPair> {
    KeyPair::from_pem(&read_file(path)?)
        .with_context(|| format!("read the private key in {}", path.display()))
}

fn read_issuer(ca_cert: &Path, ca_key: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    Issuer::from_ca_cert_pem(&read_file(ca_cert)?, read_key(ca_key)?)
        .with_context(|| format!("read the CA certificate in {}", ca_cert.display()))
}
