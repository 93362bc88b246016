"""TLS for the crowd server: the operator's own certificate, or a local CA and a certificate it signs.

``--tls-cert FILE --tls-key FILE``: a certificate (PEM, with its chain) and its key, e.g. from the
team's own CA or a public one.

``--tls self-signed``: on first start, a local certificate authority is made in
``DATA_DIR/tls/`` (``ca.pem``; its key ``ca-key.pem`` never leaves the data directory) and a
server certificate it signs (``cert.pem``, ``key.pem``) for ``localhost``, 127.0.0.1, ::1, the
machine's host name and every ``--tls-hostname``.  Later starts reuse them, and sign a new server
certificate when a name is added or the old one is within 30 days of expiring; the CA stays, so
clients keep trusting it.  Clients trust ``ca.pem``: boto3 with ``verify="DATA_DIR/tls/ca.pem"``
(the AWS config file written in the data directory names it as ``ca_bundle``), browsers after
importing it once (or by accepting the warning).  This is the ``mkcert`` arrangement: two tiers,
because browsers refuse a CA certificate used directly as a server certificate.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.crowd_server.errors import LabelpropError

LEAF_DAYS = 397
CA_DAYS = 3650
RENEW_BEFORE_DAYS = 30
_DNS_NAME = re.compile(r"(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def check_hostname(name: str) -> str:
    if _ip(name) is None and not _DNS_NAME.fullmatch(name):
        raise LabelpropError(f"--tls-hostname {name!r} is not a host name or IP address")
    return name.rstrip(".").lower() if _ip(name) is None else str(_ip(name))


def machine_hostname() -> str | None:
    name = socket.gethostname()
    return name.lower() if name and _DNS_NAME.fullmatch(name) and name.lower() != "localhost" else None


@dataclass
class CertInfo:
    cert_file: str
    key_file: str
    ca_file: str | None          # the CA that signed it, when we made it (self-signed mode)
    names: list[str]             # DNS names and IP addresses it is valid for
    not_after: dt.datetime
    endpoint_name: str | None    # the name local clients should use in the endpoint URL
    primary_name: str | None     # the name workers on other machines should use

    def describe(self) -> dict:
        return {"cert_file": self.cert_file, "ca_file": self.ca_file, "names": self.names,
                "not_after": self.not_after.isoformat()}

    def describe_line(self) -> str:
        trust = (f"; clients trust {self.ca_file} (boto3 verify=, import into browsers)" if self.ca_file
                 else "")
        return f"certificate {self.cert_file} for {', '.join(self.names)} until {self.not_after:%Y-%m-%d}{trust}"


@dataclass
class TlsSetup:
    """What the command line asked for; ``materialize`` turns it into files."""
    mode: str                                   # "self-signed" | "files"
    cert_file: Path | None = None
    key_file: Path | None = None
    hostnames: list[str] = field(default_factory=list)

    @classmethod
    def from_options(cls, tls: str | None, cert: Path | None, key: Path | None,
                     hostnames: list[str] | None) -> "TlsSetup | None":
        hostnames = [check_hostname(h) for h in (hostnames or [])]
        if (cert is None) != (key is None):
            raise LabelpropError("--tls-cert and --tls-key go together (the certificate and its private key)")
        if tls is not None and tls not in ("self-signed", "off"):
            raise LabelpropError(f"--tls must be 'self-signed' (or give --tls-cert and --tls-key), got {tls!r}")
        if tls == "self-signed" and cert is not None:
            raise LabelpropError("give --tls self-signed or --tls-cert/--tls-key, not both")
        if cert is not None:
            return cls("files", Path(cert), Path(key), hostnames)
        if tls == "self-signed":
            return cls("self-signed", hostnames=hostnames)
        if hostnames:
            raise LabelpropError("--tls-hostname only makes sense with --tls self-signed")
        return None

    def check_files(self) -> None:
        """Before anything is created: the operator's certificate and key load and belong together."""
        if self.mode != "files":
            return
        for label, p in (("--tls-cert", self.cert_file), ("--tls-key", self.key_file)):
            if not p.is_file():
                raise LabelpropError(f"{label} {p}: no such file")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except ssl.SSLError as exc:
            raise LabelpropError(f"--tls-cert {self.cert_file} / --tls-key {self.key_file}: cannot be used "
                                 f"together ({exc.reason or exc})") from None
        except OSError as exc:
            raise LabelpropError(f"--tls-cert/--tls-key: {exc.strerror or exc}") from None

    def materialize(self, data_dir: Path, host: str) -> CertInfo:
        if self.mode == "files":
            return _describe_files(self.cert_file, self.key_file, host)
        return ensure_self_signed(Path(data_dir), host, self.hostnames)


# ---------------------------------------------------------------- the operator's certificate

def _load_cert(path: Path):
    from cryptography import x509
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _san_names(cert) -> list[str]:
    from cryptography import x509
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([str(n) for n in san.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])


def _not_after(cert) -> dt.datetime:
    return getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=dt.timezone.utc)


def _describe_files(cert_file: Path, key_file: Path, host: str) -> CertInfo:
    try:
        cert = _load_cert(cert_file)
    except (ValueError, OSError) as exc:
        raise LabelpropError(f"--tls-cert {cert_file}: not a PEM certificate ({exc})") from None
    names = _san_names(cert)
    dns = [n for n in names if _ip(n) is None and "*" not in n]
    if host in names:
        endpoint = host
    elif host in WILDCARD_HOSTS or host in LOOPBACK_HOSTS:
        local = next((n for n in ("127.0.0.1", "localhost", "::1") if n in names), None)
        endpoint = local or (dns[0] if dns else None)
    else:
        endpoint = host
    primary = dns[0] if dns else endpoint
    return CertInfo(str(Path(cert_file).resolve()), str(Path(key_file).resolve()), None, names,
                    _not_after(cert), endpoint, primary)


# ---------------------------------------------------------------- self-signed (a local CA)

def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_ca(label: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    key = _new_key()
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "labelprop crowd-server"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"labelprop crowd-server local CA ({label})"[:64])])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _make_leaf(ca_key, ca_cert, names: list[str]):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    key = _new_key()
    now = dt.datetime.now(dt.timezone.utc)
    alt = [x509.IPAddress(_ip(n)) if _ip(n) is not None else x509.DNSName(n) for n in names]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def wanted_names(host: str, extra: list[str]) -> list[str]:
    names: list[str] = []
    for n in [*extra, machine_hostname(), "localhost", "127.0.0.1", "::1",
              host if host not in WILDCARD_HOSTS else None]:
        if n and n not in names:
            names.append(check_hostname(n))
    return list(dict.fromkeys(names))


def ensure_self_signed(data_dir: Path, host: str, extra_names: list[str]) -> CertInfo:
    from cryptography.hazmat.primitives import serialization
    d = Path(data_dir) / "tls"
    d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    ca_file, ca_key_file, cert_file, key_file = d / "ca.pem", d / "ca-key.pem", d / "cert.pem", d / "key.pem"
    names = wanted_names(host, extra_names)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ca_cert = None
    if ca_file.exists() and ca_key_file.exists():
        try:
            ca_cert = _load_cert(ca_file)
            ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), None)
            if _not_after(ca_cert) - now < dt.timedelta(days=365):
                ca_key = ca_cert = None
        except (ValueError, OSError):
            ca_key = ca_cert = None
    if ca_cert is None:
        ca_key, ca_cert = _make_ca(names[0])
        _write_private(ca_key_file, _key_pem(ca_key))
        _write_private(ca_file, _cert_pem(ca_cert))
        for stale in (cert_file, key_file):
            stale.unlink(missing_ok=True)
    leaf = None
    if cert_file.exists() and key_file.exists():
        try:
            leaf = _load_cert(cert_file)
            fresh = _not_after(leaf) - now > dt.timedelta(days=RENEW_BEFORE_DAYS)
            if not (fresh and leaf.issuer == ca_cert.subject and set(names) <= set(_san_names(leaf))):
                leaf = None
        except (ValueError, OSError):
            leaf = None
    if leaf is None:
        key, leaf = _make_leaf(ca_key, ca_cert, names)
        _write_private(key_file, _key_pem(key))
        _write_private(cert_file, _cert_pem(leaf) + _cert_pem(ca_cert))
    endpoint = None if host not in WILDCARD_HOSTS else "127.0.0.1"
    primary = next((n for n in names if n not in LOOPBACK_HOSTS), None)
    return CertInfo(str(cert_file), str(key_file), str(ca_file), _san_names(leaf), _not_after(leaf),
                    endpoint, primary)


# ---------------------------------------------------------------- serving

def server_context(cert: CertInfo) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    return ctx


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """What our own clients (health checks, simulated workers) use to reach the server."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


def public_url(host: str, port: int, scheme: str, cert: CertInfo | None) -> str:
    """The URL for workers on other machines when the server listens on every interface."""
    name = (cert.primary_name if cert is not None else None) or machine_hostname() or "127.0.0.1"
    if _ip(name) is not None and ":" in name:
        name = f"[{name}]"
    return f"{scheme}://{name}:{port}"
