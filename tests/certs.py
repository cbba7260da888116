"""Throwaway X.509 material for the TLS and OPC UA security tests (``cryptography``).

``make_ca(directory)`` writes a CA; ``ca.issue(name, ...)`` a certificate signed by it
(for a TLS server: the IP 127.0.0.1 and ``localhost`` as subject alternative names);
``self_signed(directory, name, uri=...)`` an OPC UA application instance certificate
(self-signed, the application URI as a URI SAN). Keys are 2048-bit RSA, certificates
valid for a day. PEM files unless asked for DER (OPC UA certificates travel as DER).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import socket
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class Issued:
    """A certificate and its key, written to files."""

    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class Authority:
    """A CA: ``cert`` (PEM) is what clients trust; ``issue`` signs server certificates."""

    directory: Path
    cert: Path
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    def issue(self, name: str, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
              ) -> Issued:
        """A server certificate for ``hosts`` (IP addresses or DNS names), signed by
        this CA: ``NAME.pem`` and ``NAME.key``."""
        key = _key()
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        certificate = (
            _builder(_name(name), self.certificate.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return _write(self.directory, name, certificate, key, der=False)


def make_ca(directory: Path, name: str = "sessions test CA") -> Authority:
    """A self-signed CA: ``NAME.pem`` in ``directory`` (the key stays in memory)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = _key()
    subject = _name(name)
    certificate = (
        _builder(subject, subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{_file(name)}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Authority(directory, path, key, certificate)


def self_signed(directory: Path, name: str, *, uri: str, server: bool) -> Issued:
    """An OPC UA application instance certificate: self-signed, ``uri`` (the
    application URI) and this host's name as subject alternative names; ``NAME.der``
    and ``NAME.pem`` (the key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = _key()
    subject = _name(name)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    certificate = (
        _builder(subject, subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname()),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=True,
            data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, name, certificate, key, der=True)


def _builder(subject: x509.Name, issuer: x509.Name, key: Any) -> x509.CertificateBuilder:
    """What every certificate here shares: names, key, a fresh serial, valid from five
    minutes ago (clock skew) for a day."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _DAY))


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _file(name: str) -> str:
    return name.replace(" ", "-")


def _write(directory: Path, name: str, certificate: x509.Certificate,
           key: rsa.RSAPrivateKey, *, der: bool) -> Issued:
    stem = _file(name)
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    cert = directory / f"{stem}.{'der' if der else 'pem'}"
    cert.write_bytes(certificate.public_bytes(encoding))
    key_path = directory / f"{stem}{'.pem' if der else '.key'}"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Issued(cert, key_path)
