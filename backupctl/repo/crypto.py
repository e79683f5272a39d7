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

from backupctl.core.errors import BackupctlError, ConfigError, DecryptionError

SECRET_PREFIX = "AGE-SECRET-KEY-1"
AGE_MAGIC = b"age-encryption.org/v1\n"
HEADER_LIMIT = 64 * 1024  # an age header this long would hold some 600 X25519 stanzas
GREASE = "-grease"
RECIPIENTS_COMMAND = "backupctl repo recipients add|remove AGE1..."


def parse_recipients(recipients: list[str], where: str) -> list[x25519.Recipient]:
    """Validate the config's public keys up front, so a typo fails before any data moves."""
    parsed = []
    for text in recipients:
        try:
            parsed.append(x25519.Recipient.from_str(text.strip()))
        except pyrage.RecipientError as exc:
            raise ConfigError(f"{where}: {text!r} is not an age X25519 recipient (age1...)") from exc
    return parsed


def check_recipients(configured: list[str], listed: list[str], location: str, setting: str) -> None:
    """Refuse a config whose recipients are not exactly the repository's (order aside), naming the difference.

    Only ``backupctl repo recipients`` changes the repository's list (key rotation), so a typo'd, old or
    tampered config cannot quietly write backups that the real identity cannot open, or that a stranger can.
    """
    unknown = [r for r in configured if r not in listed]
    absent = [r for r in listed if r not in configured]
    if not unknown and not absent:
        return
    differences = ([f"{', '.join(unknown)} is not one of the repository's"] if unknown else []) + (
        [f"{', '.join(absent)} is missing"] if absent else [])
    raise ConfigError(
        f"{setting} differ from what repository {location} lists ({', '.join(listed)}): "
        f"{'; '.join(differences)}; copy the repository's list into the config, or change the repository's "
        f"with `{RECIPIENTS_COMMAND}`"
    )


def header_stanzas(stream: BinaryIO) -> list[str]:
    """The types of an age file's recipient stanzas (``X25519``, ``scrypt``...), read from its header.

    An X25519 stanza holds an ephemeral share and the wrapped file key, never the recipient: without a
    recipient's identity nobody can tell whom it is for. So the count is what a host holding only public
    keys can compare with the recipients a manifest records. rage also writes "grease" stanzas (random types
    ending in ``-grease``) that no identity opens: they are left out. Raises ValueError for a header that is not
    age's.
    """
    head = b""
    while b"\n---" not in head and len(head) < HEADER_LIMIT:
        chunk = stream.read(HEADER_LIMIT - len(head))
        if not chunk:
            break
        head += chunk
    if not head.startswith(AGE_MAGIC):
        raise ValueError("it does not start with an age header")
    types = []
    for line in head[len(AGE_MAGIC):].split(b"\n"):
        if line.startswith(b"---"):
            return types
        kind = line[3:].split(b" ", 1)[0].decode("ascii", "replace") if line.startswith(b"-> ") else ""
        if kind and not kind.endswith(GREASE):
            types.append(kind)
    raise ValueError("its age header has no end")


def load_identity(path: Path) -> x25519.Identity:
    """Read an age-keygen identity file (comment lines allowed)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise DecryptionError(
            f"identity file {path} does not exist: set encryption.identity_file to the key from keygen"
        ) from exc
    except PermissionError as exc:
        raise DecryptionError(f"identity file {path} is not readable by this user") from exc
    keys = [line.strip() for line in lines if line.strip().startswith(SECRET_PREFIX)]
    if not keys:
        raise DecryptionError(f"identity file {path} holds no age secret key ({SECRET_PREFIX}...)")
    try:
        return x25519.Identity.from_str(keys[0])
    except pyrage.IdentityError as exc:
        raise DecryptionError(f"identity file {path}: the secret key is malformed") from exc


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
        raise DecryptionError(str(exc)) from exc


def encrypt_bytes(data: bytes, recipients: list[x25519.Recipient]) -> bytes:
    return pyrage.encrypt(data, recipients)


def decrypt_bytes(data: bytes, identity: x25519.Identity) -> bytes:
    try:
        return pyrage.decrypt(data, [identity])
    except (pyrage.DecryptError, OSError, ValueError) as exc:
        raise DecryptionError(f"cannot decrypt: {exc}") from exc


def generate_key_file(path: Path) -> str:
    """Write a new identity to ``path`` (0600, never overwriting) and return its recipient."""
    identity = x25519.Identity.generate()
    recipient = public_key(identity)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise BackupctlError(
            f"{path} already exists: keygen never overwrites a key; choose another path"
        ) from exc
    except OSError as exc:
        raise BackupctlError(f"cannot create {path}: {exc.strerror}") from exc
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"# created: {created}\n# public key: {recipient}\n{identity}\n")
        handle.flush()
        os.fsync(handle.fileno())
    return recipient
