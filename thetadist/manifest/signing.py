"""Ed25519 publisher signatures over a manifest id.

A signature covers ``b"thetadist manifest v1\\0" + manifest_id`` so it cannot be confused with
a signature over anything else the same key signs.  Keys are stored as PKCS#8 PEM files
(interoperable with OpenSSL); public keys are written as 64 hex digits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from thetadist.errors import SignatureError, UsageError

if TYPE_CHECKING:
    from thetadist.manifest.model import Manifest

_CONTEXT = b"thetadist manifest v1\x00"
MAX_KEY_FILE_BYTES = 16 * 1024


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def save_private_key(key: Ed25519PrivateKey, path: str | os.PathLike[str]) -> None:
    """Write ``key`` as PKCS#8 PEM, readable by its owner only; never overwrite a key."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"key file {os.fspath(path)!r} already exists; not overwriting") from None
    except OSError as exc:
        raise UsageError(f"cannot write key file {os.fspath(path)!r}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()[:MAX_KEY_FILE_BYTES]
        key = serialization.load_pem_private_key(data, password=None)
    except OSError as exc:
        raise UsageError(f"cannot read key file {os.fspath(path)!r}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise UsageError(f"{os.fspath(path)!r} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{os.fspath(path)!r} is not an Ed25519 key")
    return key


def parse_public_key(text: str) -> bytes:
    """Accept 64 hex digits, or a path to a file holding them or a PEM public key."""
    candidate = text.strip()
    if len(candidate) == 64:
        try:
            return bytes.fromhex(candidate)
        except ValueError:
            pass
    path = Path(candidate)
    if path.is_file():
        data = path.read_bytes()[:MAX_KEY_FILE_BYTES]
        if data.startswith(b"-----BEGIN PUBLIC KEY"):
            try:
                public = serialization.load_pem_public_key(data)
            except ValueError:
                raise UsageError(f"{candidate!r} is not a PEM public key") from None
            if isinstance(public, Ed25519PublicKey):
                return public_key_bytes(public)
        return parse_public_key(data.decode("ascii", "replace"))
    raise UsageError(f"not a public key (64 hex digits or a key file): {candidate[:80]!r}")


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey) -> Manifest:
    signature = key.sign(_CONTEXT + manifest.id)
    return manifest.with_signatures({public_key_bytes(key): signature})


def verify_manifest_signatures(manifest: Manifest, trust: Sequence[bytes]) -> None:
    """Every signature present must verify; every trusted key must be among the signers."""
    message = _CONTEXT + manifest.id
    for key, signature in manifest.signatures.items():
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
        except (InvalidSignature, ValueError):
            raise SignatureError(f"bad publisher signature by key {key.hex()[:16]}…") from None
    for key in trust:
        if key not in manifest.signatures:
            raise SignatureError(f"manifest is not signed by trusted key {key.hex()[:16]}…")
