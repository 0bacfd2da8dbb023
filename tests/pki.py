"""TLS certificates made for tests: a CA, a server pair (localhost, 127.0.0.1), a client pair."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _write_pair(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _issue(
    subject: str, issuer: x509.Name | None, signer: ec.EllipticCurvePrivateKey | None, *, ca: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signer or key, hashes.SHA256()), key


def make_pki(folder: Path) -> dict[str, Path]:
    """A test CA, a server pair for localhost/127.0.0.1 and a client pair, as PEM files in `folder`."""
    ca_cert, ca_key = _issue("polypstream test CA", None, None, ca=True)
    server_cert, server_key = _issue("localhost", ca_cert.subject, ca_key)
    client_cert, client_key = _issue("scope-client", ca_cert.subject, ca_key)
    ca_path, _ = _write_pair(folder, "ca", ca_cert, ca_key)
    s_cert, s_key = _write_pair(folder, "server", server_cert, server_key)
    c_cert, c_key = _write_pair(folder, "client", client_cert, client_key)
    return {"ca": ca_path, "server_cert": s_cert, "server_key": s_key, "client_cert": c_cert, "client_key": c_key}
