"""API keys for the service: random keys, kept only as hashes, checked in constant time.

Key file: one `NAME sha256:HEX ROLE` line per key (`#` comments), written by `vqc keys add FILE
--name NAME --role ROLE`, which prints the key once. Roles: `operator` keys inspect, read the
records and review verdicts; `admin` keys also promote and roll back models and change thresholds.
A line without a role (files from before roles) is an operator key: the least a key may do.

A plain SHA-256 is enough at rest because the keys are 256-bit random
strings, not passwords a person chose: slow password hashes guard guessable secrets. Requests send
the key as `Authorization: Bearer KEY` or `X-API-Key: KEY`, never in the URL (URLs are logged).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from pathlib import Path

from .errors import VqcError
from .files import write_text_atomic

log = logging.getLogger(__name__)

ROLES = ("operator", "admin")
LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.@-]+)\s+sha256:(?P<hash>[0-9a-f]{64})(?:\s+(?P<role>[a-z]+))?$")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The keys of one file. A service re-reads the file when it changes, so `vqc keys revoke`
    and `vqc keys add` take effect on the next request; a file broken meanwhile keeps the keys
    it had in force (and says so in the log) rather than opening or closing the service."""

    def __init__(self, hashes: dict[str, str], path: Path | None = None, roles: dict[str, str] | None = None):
        """hashes: name -> SHA-256 of the key; roles: name -> role (operator unless named)."""
        if not hashes:
            raise VqcError("an API key file needs at least one key (vqc keys add FILE --name NAME)")
        self.hashes, self.path = hashes, path
        self.roles = {name: (roles or {}).get(name, "operator") for name in hashes}
        self.stamp = _stamp(path) if path else None

    @classmethod
    def from_file(cls, path: str | Path) -> "ApiKeys":
        path = Path(path)
        return cls(*_read_keys(path))

    def refresh(self) -> None:
        stamp = _stamp(self.path) if self.path else None
        if stamp == self.stamp:
            return
        self.stamp = stamp
        try:
            self.hashes, _, self.roles = _read_keys(self.path)
        except VqcError as exc:
            log.error("API key file changed but was not taken (the keys before stay in force): %s", exc)

    def role(self, name: str) -> str:
        return self.roles.get(name, "operator")

    def check(self, key: str | None) -> str | None:
        """The name of the key, or None. Every stored hash is compared, in constant time, so the
        time taken says nothing about how close a guess came."""
        self.refresh()
        if not key:
            return None
        presented = key_hash(key).encode()
        found = None
        for name, stored in self.hashes.items():
            if hmac.compare_digest(presented, stored.encode()):
                found = name
        return found


def _read_keys(path: Path) -> tuple[dict[str, str], Path, dict[str, str]]:
    """(name -> hash, path, name -> role) of a key file."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise VqcError(f"cannot read API key file {path}: {exc.strerror}") from None
    hashes, roles = {}, {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        if not match:  # the line is not echoed: it may be a key pasted in by mistake
            raise VqcError(f"API key file {path}, line {number} is not 'NAME sha256:HEX [ROLE]'; "
                           "the file holds hashes, not keys: make them with vqc keys add")
        if match["role"] and match["role"] not in ROLES:
            raise VqcError(f"API key file {path}, line {number}: role {match['role']!r} is not one of "
                           f"{', '.join(ROLES)}")
        hashes[match["name"]] = match["hash"]
        roles[match["name"]] = match["role"] or "operator"
    if not hashes:
        raise VqcError(f"API key file {path} has no keys (vqc keys add {path} --name NAME)")
    return hashes, path, roles


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def presented_key(headers) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or None


def add_key(path: str | Path, name: str, role: str = "operator") -> str:
    """Append a new key's hash to the key file (created owner-only) and return the key itself."""
    path = Path(path)
    if role not in ROLES:
        raise VqcError(f"key role {role!r}: use {' or '.join(ROLES)}")
    if not re.fullmatch(r"[A-Za-z0-9_.@-]+", name):
        raise VqcError(f"key name {name!r}: use letters, digits and _ . @ - only")
    existing = path.read_text() if path.exists() else ""
    if existing.strip() and name in ApiKeys.from_file(path).hashes:  # reading it also refuses a broken file
        raise VqcError(f"API key file {path} already has a key named {name}")
    key = "vqc_" + secrets.token_urlsafe(32)
    text = existing + ("" if not existing or existing.endswith("\n") else "\n") + f"{name} sha256:{key_hash(key)} {role}\n"
    write_text_atomic(path, text)
    os.chmod(path, 0o600)
    return key


def revoke_key(path: str | Path, name: str) -> int:
    """Remove the key named `name` from the key file; returns how many keys are left. The last
    key is not removed: a file with none would leave a service that asks for keys unusable."""
    path = Path(path)
    hashes = ApiKeys.from_file(path).hashes
    if name not in hashes:
        raise VqcError(f"API key file {path} has no key named {name} (it has: {', '.join(hashes)})")
    if len(hashes) == 1:
        raise VqcError(f"{name} is the last key in {path}: add another first (vqc keys add), or stop "
                       "the service, which asks for a key while it has a key file")
    lines = [line for line in path.read_text().splitlines(keepends=True)
             if not ((m := LINE.match(line.strip())) and m["name"] == name)]
    write_text_atomic(path, "".join(lines))
    os.chmod(path, 0o600)
    return len(hashes) - 1
