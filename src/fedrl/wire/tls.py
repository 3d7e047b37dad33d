"""TLS for the gRPC link: a development PKI, credential loaders, and the plain-text guard.

A deployment either brings its own certificates or makes a development set with
``fedrl certs``: a CA, a server certificate naming every address clients dial, and one
certificate per client for optional mutual TLS (its common name is the client's name). The
CA's private key is not written: nobody can mint more certificates from a copied folder, and a
fresh set is made by running the command again.

Server and edge agents load their PEM files through ``server_credentials`` and
``channel_credentials``, which name the file at fault when one is missing or is not what it
should be, rather than leaving gRPC to fail the handshake without saying why. Plain text is
for tests on one machine only: ``ensure_plaintext_allowed`` refuses it unless it was asked
for and the address is loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 365
ALWAYS_HOSTS = ("localhost", "127.0.0.1", "::1")  # the server certificate always names loopback
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")  # a safe file name and common name


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key (EC P-256), as made by this module."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The certificate, PEM-encoded."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key, PEM-encoded (PKCS#8, unencrypted)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str, issuer: Identity | None, days: int, extensions: Sequence[tuple[x509.ExtensionType, bool]]
) -> Identity:
    """Sign a new key's certificate by ``issuer``, or by itself when ``issuer`` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a little clock skew between devices
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    signing_key = issuer.key if issuer else key  # a self-signed CA signs with its own key
    return Identity(builder.sign(signing_key, hashes.SHA256()), key)


_KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
    "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)  # fmt: skip


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """A key usage extension that allows ``allowed`` and nothing else."""
    return x509.KeyUsage(**{usage: usage in allowed for usage in _KEY_USAGES})


def _leaf_usage(purpose: x509.ObjectIdentifier) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage("digital_signature"), True),
        (x509.ExtendedKeyUsage([purpose]), False),
    ]


def make_ca(name: str = "fedrl development CA", days: int = DEFAULT_DAYS) -> Identity:
    """A self-signed certificate authority that signs the server's and the clients' certificates."""
    ca = x509.BasicConstraints(ca=True, path_length=0)
    return _issue(name, None, days, [(ca, True), (_key_usage("key_cert_sign", "crl_sign"), True)])


def _general_name(host: str) -> x509.GeneralName:
    if not host or host != host.strip():
        raise ValueError(f"host {host!r}: expected a DNS name or an IP address")
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_server_identity(ca: Identity, hosts: Sequence[str] = (), days: int = DEFAULT_DAYS) -> Identity:
    """The server's certificate, signed by ``ca``, valid for loopback and every name or IP in ``hosts``."""
    names = [_general_name(host) for host in dict.fromkeys([*ALWAYS_HOSTS, *hosts])]
    extensions = [*_leaf_usage(ExtendedKeyUsageOID.SERVER_AUTH), (x509.SubjectAlternativeName(names), False)]
    return _issue("fedrl server", ca, days, extensions)


def make_client_identity(ca: Identity, name: str, days: int = DEFAULT_DAYS) -> Identity:
    """A client's certificate for mutual TLS, signed by ``ca``, with common name ``name``."""
    if not _CLIENT_NAME.fullmatch(name):
        raise ValueError(f"client name {name!r}: use up to 64 letters, digits, '_', '-' and '.', not starting with '.'")
    return _issue(name, ca, days, _leaf_usage(ExtendedKeyUsageOID.CLIENT_AUTH))


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start, so a key is never readable by others, even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def write_dev_pki(
    out: Path, hosts: Sequence[str] = (), clients: Sequence[str] = (), days: int = DEFAULT_DAYS
) -> list[Path]:
    """Write a development set into ``out``: ca.pem, server.pem/.key, client-NAME.pem/.key; returns the paths.

    Private keys are created with mode 600. Existing files are never overwritten
    (``FileExistsError``): a new CA would silently invalidate every certificate already handed out.
    """
    ca = make_ca(days=days)
    server = make_server_identity(ca, hosts, days)
    identities = {"server": server, **{f"client-{name}": make_client_identity(ca, name, days) for name in clients}}
    planned = [out / "ca.pem", *(out / f"{stem}{suffix}" for stem in identities for suffix in (".pem", ".key"))]
    existing = [path for path in planned if path.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} already exists; choose an empty folder or remove the old set")
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "ca.pem", ca.cert_pem, 0o644)
    for stem, identity in identities.items():
        _write(out / f"{stem}.pem", identity.cert_pem, 0o644)
        _write(out / f"{stem}.key", identity.key_pem, 0o600)
    return planned


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (expected the {what})") from None


def _read_certs(path: Path, what: str) -> bytes:
    data = _read(path, what)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path}: not a PEM certificate (expected the {what})") from None
    return data


def _read_pair(cert_path: Path, key_path: Path, what: str) -> tuple[bytes, bytes]:
    """Read a certificate and its private key, checking that they belong together."""
    cert_pem = _read_certs(cert_path, f"{what} certificate")
    key_pem = _read(key_path, f"{what} private key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):  # TypeError: an encrypted key, which gRPC cannot use
        raise ValueError(f"{key_path}: not an unencrypted PEM private key (expected the {what} private key)") from None
    if x509.load_pem_x509_certificates(cert_pem)[0].public_key() != key.public_key():
        raise ValueError(f"{key_path} is not the private key of {cert_path}")
    return cert_pem, key_pem


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """The server's TLS credentials; with ``client_ca``, clients must show a certificate that CA signed."""
    cert_pem, key_pem = _read_pair(cert, key, "server")
    pairs = [(key_pem, cert_pem)]  # gRPC wants the key first
    if client_ca is None:
        return grpc.ssl_server_credentials(pairs)
    roots = _read_certs(client_ca, "CA certificate that signs client certificates")
    return grpc.ssl_server_credentials(pairs, root_certificates=roots, require_client_auth=True)


def channel_credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """A client's TLS credentials: trust ``ca``; with ``cert`` and ``key``, also show a client certificate."""
    roots = _read_certs(ca, "CA certificate that signed the server's certificate")
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both its certificate and its private key")
    if cert is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    cert_pem, key_pem = _read_pair(cert, key, "client")
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key_pem, certificate_chain=cert_pem)


def _host(address: str) -> str:
    """The host part of a gRPC address: ``host:port``, ``[v6]:port``, ``dns:///host:port``, ``ipv4:ip:port``."""
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if address.startswith(scheme):
            address = address[len(scheme) :]
    if address.startswith("//"):  # dns://AUTHORITY/host:port names a DNS server first
        address = address[2:].partition("/")[2]
    if address.startswith("["):
        return address[1:].partition("]")[0]
    try:
        ipaddress.ip_address(address)  # a bare IPv6 address has colons but no port
        return address
    except ValueError:
        return address.rpartition(":")[0] if ":" in address else address


def is_loopback(address: str) -> bool:
    """Whether a gRPC listen or dial address stays on this machine (localhost, 127.0.0.0/8, ::1, unix socket)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = _host(address)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_plaintext_allowed(address: str, allow_plaintext: bool) -> None:
    """Raise ``ValueError`` unless plain text was explicitly allowed and ``address`` is loopback.

    Server and client call this before they listen or dial without TLS: tokens and model
    updates must never cross a network in the clear, even by a misconfiguration.
    """
    if not allow_plaintext:
        raise ValueError(
            f"no TLS certificates given for {address}: give them, "
            "or explicitly allow plain text on a loopback address for testing"
        )
    if not is_loopback(address):
        raise ValueError(f"plain text refused for {address}: it is not a loopback address; use TLS off this machine")
