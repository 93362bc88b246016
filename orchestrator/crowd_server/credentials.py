"""The requester key pair, stored in the data directory in AWS's own file formats.

``<data-dir>/credentials`` is an AWS shared-credentials file (profiles
``default`` and ``labelprop-crowd``), mode 0600, created on first start.
``<data-dir>/config`` is an AWS config file with the region and, once the
server has started, ``endpoint_url``; so

    AWS_SHARED_CREDENTIALS_FILE=<data-dir>/credentials AWS_CONFIG_FILE=<data-dir>/config \
        python -c 'import boto3; print(boto3.client("mturk").get_account_balance())'

talks to the running crowd server (under TLS the config file also names the CA bundle
that signed the server's certificate, ``ca_bundle``, so boto3 verifies it with no other setting).

``rotate`` replaces the key pair; a running server picks the new one up on its next API
request (it re-reads the file when it changes) and the old key stops working at once.
"""
from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

from . import ids

PROFILE = "labelprop-crowd"
REGION = "us-east-1"


@dataclass(frozen=True)
class RequesterCredentials:
    access_key_id: str
    secret_access_key: str
    region: str = REGION


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def credentials_path(data_dir: Path) -> Path:
    return Path(data_dir) / "credentials"


def config_path(data_dir: Path) -> Path:
    return Path(data_dir) / "config"


def load(data_dir: Path) -> RequesterCredentials | None:
    path = credentials_path(data_dir)
    if not path.exists():
        return None
    cp = configparser.ConfigParser()
    cp.read(path)
    sec = cp[PROFILE] if cp.has_section(PROFILE) else cp["default"]
    return RequesterCredentials(sec["aws_access_key_id"], sec["aws_secret_access_key"])


def load_or_create(data_dir: Path) -> RequesterCredentials:
    existing = load(data_dir)
    if existing is not None:
        os.chmod(credentials_path(data_dir), 0o600)
        return existing
    creds = RequesterCredentials(ids.access_key_id(), ids.secret_access_key())
    _write_credentials(Path(data_dir), creds)
    write_config(data_dir, None)
    return creds


def _write_credentials(data_dir: Path, creds: RequesterCredentials) -> None:
    body = ""
    for name in ("default", PROFILE):
        body += (f"[{name}]\naws_access_key_id = {creds.access_key_id}\n"
                 f"aws_secret_access_key = {creds.secret_access_key}\n\n")
    _write_private(credentials_path(data_dir), body)


def rotate(data_dir: Path) -> RequesterCredentials:
    """A new requester key pair in place of the old one (which stops working at once)."""
    creds = RequesterCredentials(ids.access_key_id(), ids.secret_access_key())
    _write_credentials(Path(data_dir), creds)
    return creds


class CredentialsFile:
    """The server's view of the key pair: re-read when the file changes (after ``rotate``)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._creds = load_or_create(self.data_dir)
        self._stamp = self._stat()

    def _stat(self):
        try:
            st = os.stat(credentials_path(self.data_dir))
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    def current(self) -> RequesterCredentials:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            try:
                fresh = load(self.data_dir)
            except (OSError, KeyError, configparser.Error):
                fresh = None
            if fresh is not None:
                self._creds, self._stamp = fresh, stamp
        return self._creds

    def secret_for(self, access_key_id: str) -> str | None:
        c = self.current()
        return c.secret_access_key if access_key_id == c.access_key_id else None


def write_config(data_dir: Path, endpoint_url: str | None, ca_bundle: str | None = None) -> None:
    body = ""
    for header in ("default", f"profile {PROFILE}"):
        body += f"[{header}]\nregion = {REGION}\n"
        if endpoint_url:
            body += f"endpoint_url = {endpoint_url}\n"
        if ca_bundle:
            body += f"ca_bundle = {ca_bundle}\n"
        body += "\n"
    _write_private(config_path(data_dir), body)
