"""The certificates of the TLS listener a managed Mosquitto opens for devices.

Without certificates from the operator, the server is its own small CA: `tls/ca.crt` (kept, handed to
devices at enrollment to pin) signs `tls/broker.crt` for the host name devices use. Keys are written
0600 and never leave the data folder; the CA key only signs the broker's certificate.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.fsutil import atomic_write_bytes

CA_DAYS, CERT_DAYS = 3650, 825


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def ensure_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    crt, key = folder / "ca.crt", folder / "ca.key"
    if crt.is_file() and key.is_file():
        loaded = serialization.load_pem_private_key(key.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key}: not the EC key this server writes; move the tls folder away to start over")
        return x509.load_pem_x509_certificate(crt.read_bytes()), loaded
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("edgeloop fleet CA"))
        .issuer_name(_name("edgeloop fleet CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write_bytes(key, _pem_key(ca_key), mode=0o600)
    atomic_write_bytes(crt, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert, ca_key


def ensure_broker_cert(folder: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """(ca.crt, broker.crt, broker.key) for `hosts`; the broker's certificate is reissued when they change."""
    ca, ca_key = ensure_ca(folder)
    crt, key = folder / "broker.crt", folder / "broker.key"
    wanted = sorted(set(hosts))
    if crt.is_file() and key.is_file():
        have = x509.load_pem_x509_certificate(crt.read_bytes())
        names = have.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        current = sorted([str(n.value) for n in names])
        if current == wanted and have.not_valid_after_utc > datetime.now(timezone.utc) + timedelta(days=30):
            return folder / "ca.crt", crt, key
    now = datetime.now(timezone.utc)
    broker_key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(wanted[0]))
        .issuer_name(ca.subject)
        .public_key(broker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in wanted]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write_bytes(key, _pem_key(broker_key), mode=0o600)
    atomic_write_bytes(crt, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return folder / "ca.crt", crt, key
