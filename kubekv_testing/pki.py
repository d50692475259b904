"""Throwaway certificate authorities for TLS tests, made with the `cryptography` package.

Tests of client and peer TLS need a CA, leaf certificates with chosen names, serials
and usages, RSA keys for JWTs, and CRLs; making them here means no test needs the
`openssl` command-line tool. Files are PEM: `<name>.pem` (certificate) and
`<name>.key` (unencrypted key) in the directory given.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for any test run, short enough that a leaked file is soon worthless.
VALIDITY = datetime.timedelta(days=2)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def san(names: list[str]) -> x509.SubjectAlternativeName:
    """SANs from host names and IP addresses (wildcards such as ``*.example.com`` too)."""
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def write_key(path: Path, key, traditional: bool = True) -> None:
    """PEM private key: PKCS#1/SEC1 ("RSA/EC PRIVATE KEY") or PKCS#8 ("PRIVATE KEY")."""
    fmt = (serialization.PrivateFormat.TraditionalOpenSSL if traditional
           else serialization.PrivateFormat.PKCS8)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt,
                                       serialization.NoEncryption()))


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def self_signed(directory: Path, name: str, key=None) -> x509.Certificate:
    """A self-signed certificate for ``key`` (a new P-256 key if None): <name>.pem/.key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + VALIDITY)
            .sign(key, hashes.SHA256()))
    write_key(directory / f"{name}.key", key)
    write_cert(directory / f"{name}.pem", cert)
    return cert


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


class CA:
    """A CA in ``directory`` (ca.pem, ca.key) that issues leaf certificates and CRLs."""

    def __init__(self, directory: Path, common_name: str = "test-ca") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(common_name))
            .issuer_name(_name(common_name)).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        write_key(directory / "ca.key", self.key)
        write_cert(directory / "ca.pem", self.cert)

    def issue(self, name: str, *, common_name: str | None = None, sans: list[str] = (),
              serial: int | None = None) -> x509.Certificate:
        """<name>.pem/.key: a P-256 leaf for serverAuth and clientAuth."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name or name))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(san(list(sans)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        write_key(self.directory / f"{name}.key", key)
        write_cert(self.directory / f"{name}.pem", cert)
        return cert

    def crl(self, revoked: list[x509.Certificate], *, next_update: datetime.timedelta =
            datetime.timedelta(days=1), name: str = "crl.pem") -> Path:
        """A PEM CRL naming ``revoked``; a negative ``next_update`` makes an expired one."""
        now = _now()
        last_update = min(now, now + next_update) - datetime.timedelta(hours=1)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
                   .last_update(last_update).next_update(now + next_update))
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                .revocation_date(last_update).build())
        path = self.directory / name
        path.write_bytes(builder.sign(self.key, hashes.SHA256())
                         .public_bytes(serialization.Encoding.PEM))
        return path
