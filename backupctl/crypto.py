"""age encryption (X25519 recipients) through pyrage, and key files in age-keygen's format.

Stored objects are plain age files, so ``age -d -i KEY`` can read them without backupctl. A backup host
needs only recipients (public keys); the identity (private key) is read only to restore or deep-verify.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pyrage
from pyrage import x25519

from backupctl.errors import BackupctlError, ConfigError, DecryptionError

SECRET_PREFIX = "AGE-SECRET-KEY-1"


def parse_recipients(recipients: list[str], where: str) -> list[x25519.Recipient]:
    """Validate the config's public keys up front, so a typo fails before any data moves."""
    parsed = []
    for text in recipients:
        try:
            parsed.append(x25519.Recipient.from_str(text.strip()))
        except pyrage.RecipientError:
            raise ConfigError(f"{where}: {text!r} is not an age X25519 recipient (age1...)") from None
    return parsed


def load_identity(path: Path) -> x25519.Identity:
    """Read an age-keygen identity file (comment lines allowed)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DecryptionError(
            f"identity file {path} does not exist: set encryption.identity_file to the key from keygen"
        ) from None
    except PermissionError:
        raise DecryptionError(f"identity file {path} is not readable by this user") from None
    keys = [line.strip() for line in lines if line.strip().startswith(SECRET_PREFIX)]
    if not keys:
        raise DecryptionError(f"identity file {path} holds no age secret key ({SECRET_PREFIX}...)")
    try:
        return x25519.Identity.from_str(keys[0])
    except pyrage.IdentityError:
        raise DecryptionError(f"identity file {path}: the secret key is malformed") from None


def public_key(identity: x25519.Identity) -> str:
    return str(identity.to_public())


def encrypt_stream(source: BinaryIO, sink: BinaryIO, recipients: list[x25519.Recipient]) -> None:
    """Stream ``source`` into ``sink`` as one age file (64 KiB authenticated chunks)."""
    pyrage.encrypt_io(source, sink, recipients)


def decrypt_stream(source: BinaryIO, sink: BinaryIO, identity: x25519.Identity) -> None:
    """Stream-decrypt; raises DecryptionError for a wrong key and OSError/ValueError for damaged data."""
    try:
        pyrage.decrypt_io(source, sink, [identity])
    except pyrage.DecryptError as exc:
        raise DecryptionError(str(exc)) from None


def encrypt_bytes(data: bytes, recipients: list[x25519.Recipient]) -> bytes:
    return pyrage.encrypt(data, recipients)


def decrypt_bytes(data: bytes, identity: x25519.Identity) -> bytes:
    try:
        return pyrage.decrypt(data, [identity])
    except (pyrage.DecryptError, OSError, ValueError) as exc:
        raise DecryptionError(f"cannot decrypt: {exc}") from None


def generate_key_file(path: Path) -> str:
    """Write a new identity to ``path`` (0600, never overwriting) and return its recipient."""
    identity = x25519.Identity.generate()
    recipient = public_key(identity)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupctlError(
            f"{path} already exists: keygen never overwrites a key; choose another path"
        ) from None
    except OSError as exc:
        raise BackupctlError(f"cannot create {path}: {exc.strerror}") from None
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"# created: {created}\n# public key: {recipient}\n{identity}\n")
        handle.flush()
        os.fsync(handle.fileno())
    return recipient
