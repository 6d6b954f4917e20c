"""Ed25519 private keys on disk: the receipt key and the ledger key, made and read alike."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from openexec.settings import ConfigError


def private_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def create_key_file(path: Path) -> None:
    """Write a new key with mode 0600; when several workers race, the first link wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(private_key_pem(Ed25519PrivateKey.generate()))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another worker published one first
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def read_private_key(path: Path, variable: str, what: str) -> Ed25519PrivateKey:
    """The Ed25519 key in ``path``; a ConfigError naming ``variable`` and ``what`` it is."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(
            variable, f"{str(path)!r} is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(variable, f"{str(path)!r} is not an Ed25519 private key")
    return key
