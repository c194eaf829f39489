"""X.509 device authentication with the official Python device SDK
(`IoTHubDeviceClient.create_from_x509_certificate`): a self-signed certificate registered by its
thumbprint (with the service SDK's `create_device_with_x509`), and a CA-signed certificate whose CA was
uploaded and verified through `/certificates` (proof of possession), with certificates made by the
`openssl` command line as Azure's tutorials make them."""

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest
import requests
from azure.iot.device import IoTHubDeviceClient, X509
from azure.iot.device.exceptions import CredentialError

from harness import HTTPS_ADDRESS, HUB_HOSTNAME, service_token, unique_id

# What a device certificate carries in Azure's tutorials. Device certificates must be X.509 v3: rustls's
# webpki parses the leaf in the handshake and refuses v1, which `openssl x509 -req` without extensions
# makes (docs/compat.md). The proof-of-possession certificate may be v1 (`proof_of_possession`).
DEVICE_EXTENSIONS = (
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
)


def openssl(directory: Path, *args: str) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"


def self_signed(directory: Path, name: str, days: int = 30) -> tuple[Path, Path]:
    openssl(
        directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-days", str(days),
        "-subj", f"/CN={name}",
    )
    return directory / f"{name}.pem", directory / f"{name}-key.pem"


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    # `req -x509` makes a v3 certificate with basicConstraints CA:TRUE.
    return self_signed(directory, name, days=365)


def issue(directory: Path, ca: tuple[Path, Path], common_name: str, name: str) -> tuple[Path, Path]:
    """A certificate for `common_name` signed by the CA, as `openssl x509 -req` makes it."""
    (directory / "device.ext").write_text(DEVICE_EXTENSIONS)
    openssl(
        directory, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}-key.pem", "-subj", f"/CN={common_name}", "-out", f"{name}.csr",
    )
    openssl(
        directory, "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "30", "-extfile", "device.ext",
    )
    return directory / f"{name}.pem", directory / f"{name}-key.pem"


def proof_of_possession(directory: Path, ca: tuple[Path, Path], code: str) -> Path:
    """The verification certificate exactly as Azure's proof-of-possession steps make it: an RSA key, a CSR
    whose CN is the code, and `openssl x509 -req` signed by the CA with no `-extfile` (an X.509 v1
    certificate)."""
    openssl(directory, "genpkey", "-out", "pop.key", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    openssl(directory, "req", "-key", "pop.key", "-new", "-out", "pop.csr", "-subj", f"/CN={code}")
    openssl(
        directory, "x509", "-req", "-days", "30", "-in", "pop.csr", "-CA", str(ca[0]),
        "-CAkey", str(ca[1]), "-CAcreateserial", "-out", "pop.crt",
    )
    text = subprocess.run(
        ["openssl", "x509", "-in", "pop.crt", "-noout", "-text"],
        cwd=directory, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "Version: 1 (0x0)" in text, text
    return directory / "pop.crt"


def thumbprint(certificate: Path, algorithm: str) -> str:
    pem = certificate.read_text()
    body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    return hashlib.new(algorithm, base64.b64decode(body)).hexdigest().upper()


def certificates_api(hub, method: str, path: str, body=None, etag=None) -> requests.Response:
    headers = {"Authorization": service_token(hub.owner_connection_string)}
    if etag is not None:
        headers["If-Match"] = f'"{etag}"'
    return requests.request(
        method,
        f"https://{HUB_HOSTNAME}:{HTTPS_ADDRESS[1]}/certificates{path}",
        params={"api-version": "2021-04-12"},
        json=body,
        headers=headers,
        verify=str(hub.ca_path),
        timeout=30,
    )


def x509_client(
    hub, device_id: str, certificate: tuple[Path, Path], websockets: bool = False
) -> IoTHubDeviceClient:
    return IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=str(certificate[0]), key_file=str(certificate[1])),
        hostname=HUB_HOSTNAME,
        device_id=device_id,
        server_verification_cert=hub.ca_pem,
        websockets=websockets,
    )


def connects_and_reports(
    hub, device_id: str, certificate: tuple[Path, Path], websockets: bool = False
) -> None:
    client = x509_client(hub, device_id, certificate, websockets)
    try:
        client.connect()
        client.patch_twin_reported_properties({"auth": "x509"})
        twin = client.get_twin()
        assert twin["reported"]["auth"] == "x509", twin
    finally:
        client.shutdown()


def is_refused(hub, device_id: str, certificate: tuple[Path, Path]) -> None:
    client = x509_client(hub, device_id, certificate)
    try:
        with pytest.raises(CredentialError):
            client.connect()
    finally:
        client.shutdown()


def test_self_signed_certificate_registered_by_thumbprint_connects(hub, registry, tmp_path):
    device_id = unique_id("x509-self")
    certificate = self_signed(tmp_path, device_id)
    other = self_signed(tmp_path, "another")
    registry.create_device_with_x509(
        device_id, thumbprint(certificate[0], "sha1"), thumbprint(other[0], "sha256"), "enabled"
    )
    device = registry.get_device(device_id)
    assert device.authentication.type == "selfSigned"
    connects_and_reports(hub, device_id, certificate)
    # MQTT over WebSocket on 443: the HTTPS port asks for the client certificate too.
    connects_and_reports(hub, device_id, certificate, websockets=True)
    # The secondary thumbprint, in SHA-256, works too; a third certificate does not.
    connects_and_reports(hub, device_id, other)
    is_refused(hub, device_id, self_signed(tmp_path, "stranger"))


def test_ca_signed_certificate_connects_once_the_ca_is_verified(hub, registry, tmp_path):
    device_id = unique_id("x509-ca")
    ca = make_ca(tmp_path, "compat-root")
    device_certificate = issue(tmp_path, ca, device_id, "device")
    registry.create_device_with_certificate_authority(device_id, "enabled")

    uploaded = certificates_api(
        hub, "PUT", "/compat-root", {"properties": {"certificate": ca[0].read_text()}}
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["properties"]["isVerified"] is False
    is_refused(hub, device_id, device_certificate)

    generated = certificates_api(
        hub, "POST", "/compat-root/generateVerificationCode", etag=uploaded.json()["etag"]
    )
    assert generated.status_code == 200, generated.text
    code = generated.json()["properties"]["verificationCode"]
    proof = proof_of_possession(tmp_path, ca, code)
    verified = certificates_api(
        hub,
        "POST",
        "/compat-root/verify",
        {"certificate": proof.read_text()},
        etag=generated.json()["etag"],
    )
    assert verified.status_code == 200, verified.text
    assert verified.json()["properties"]["isVerified"] is True

    connects_and_reports(hub, device_id, device_certificate)
    # Signed by the CA, but for another device id.
    is_refused(hub, device_id, issue(tmp_path, ca, "someone-else", "mismatch"))
