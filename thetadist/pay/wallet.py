"""Wallets: the payer's and payee's Ethereum key in a standard V3 keystore file.

A wallet is the JSON keystore geth, MetaMask and eth-account read and write (scrypt or PBKDF2
over the passphrase, AES-128-CTR over the key), so keys move in and out of thetadist with the
tools people already have.  eth-account does the cryptography; this module adds what a
command-line tool needs around it:

* files written with mode 0600, atomically (a temporary file linked into place, so a crash
  never leaves half a keystore and an existing wallet is never replaced unless asked);
* the passphrase from the caller, else ``THETADIST_PASSPHRASE``, else a prompt on a terminal —
  never from an argument on the command line, where other users can read it in ``ps``;
* hostile files refused before any work: size, JSON nesting, and key-derivation parameters are
  bounded (a keystore asking for scrypt with N = 2**30 would otherwise take the machine's
  memory), and every failure is one :class:`~thetadist.errors.UsageError` line;
* the address readable without the passphrase (``wallet_address``), checked against the key
  whenever the wallet is opened, so an edited address field cannot mislead for long.

Neither the passphrase nor the key is ever put in a message or a log.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thetadist.errors import StoreError, UsageError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

# eth-account takes most of a second to import; the CLI loads this module for every
# command, so it is imported by the functions that use it.

PASSPHRASE_ENV = "THETADIST_PASSPHRASE"
WALLET_ENV = "THETADIST_WALLET"
#: scrypt's N for new wallets: eth-account's and geth's standard, about a second to open.
DEFAULT_WORK_FACTOR = 1 << 18
MAX_KEYSTORE_BYTES = 64 * 1024
#: Bounds on key derivation: geth's and eth-account's defaults (scrypt N = 2**18, r = 8,
#: p = 1; PBKDF2 c = 10**6) fit with room to spare.
MAX_SCRYPT_N = 1 << 20
MAX_SCRYPT_R = 16
MAX_SCRYPT_P = 16
MAX_SCRYPT_MEMORY = 512 * 1024 * 1024
MAX_PBKDF2_ROUNDS = 10_000_000

_HEX = re.compile(r"[0-9a-fA-F]*")
_PRIVATE_KEY = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")


def default_wallet_path() -> Path:
    """``$THETADIST_WALLET``, else ``~/.config/thetadist/wallet.json`` (XDG_CONFIG_HOME)."""
    if os.environ.get(WALLET_ENV):
        return Path(os.environ[WALLET_ENV]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(config) / "thetadist" / "wallet.json"


def create_wallet(
    path: Path, passphrase: str, *, overwrite: bool = False, work_factor: int | None = None
) -> str:
    """Write a new random key to ``path``; return its checksummed address.

    ``work_factor`` is scrypt's N (a power of two); None means :data:`DEFAULT_WORK_FACTOR`.
    """
    from eth_account import Account

    account: LocalAccount = Account.create()
    _write_keystore(path, account, passphrase, overwrite=overwrite, work_factor=work_factor)
    return str(account.address)


def import_wallet(
    path: Path,
    passphrase: str,
    *,
    private_key: str | bytes | None = None,
    keystore: Path | None = None,
    keystore_passphrase: str | None = None,
    overwrite: bool = False,
    work_factor: int | None = None,
) -> str:
    """Write an existing key — ``private_key`` (hex, 32 bytes) or the key in another
    ``keystore`` — to ``path`` under ``passphrase``; return its checksummed address."""
    if (private_key is None) == (keystore is None):
        raise UsageError("import needs exactly one of a private key or a keystore")
    if keystore is not None:
        account = open_wallet(keystore, passphrase=keystore_passphrase)
    else:
        account = _account_from_key(private_key)
    _write_keystore(path, account, passphrase, overwrite=overwrite, work_factor=work_factor)
    return str(account.address)


def open_wallet(path: Path, *, passphrase: str | None = None) -> LocalAccount:
    """Decrypt the wallet at ``path``; the passphrase comes from the argument, else
    ``$THETADIST_PASSPHRASE``, else a prompt when stdin is a terminal."""
    from eth_account import Account

    keystore = _load_keystore(path)
    if passphrase is None:
        passphrase = _passphrase_from_environment(path)
    try:
        key = Account.decrypt(keystore, passphrase)
    except ValueError:
        # the structure was checked, so what fails now is the MAC over the derived key
        raise UsageError(f"wrong passphrase for wallet {str(path)!r}") from None
    except (KeyError, TypeError, AttributeError):
        raise UsageError(f"{str(path)!r} is not a valid keystore") from None
    account: LocalAccount = Account.from_key(key)
    recorded = keystore.get("address")
    if recorded is not None and _normalise_address(recorded) != account.address.lower()[2:]:
        raise UsageError(f"wallet {str(path)!r}: its address field does not match its key")
    return account


def wallet_address(path: Path) -> str:
    """The checksummed address a wallet declares, read without the passphrase."""
    from eth_utils.address import to_checksum_address

    address = _normalise_address(_load_keystore(path).get("address"))
    if address is None:
        raise UsageError(f"wallet {str(path)!r} has no address field; open it to see the address")
    return str(to_checksum_address("0x" + address))


def read_passphrase(prompt: str, *, confirm: bool = False) -> str:
    """Prompt on the terminal (hidden input), twice when ``confirm``; UsageError without one."""
    if not sys.stdin.isatty():
        raise UsageError(f"no passphrase: set {PASSPHRASE_ENV} or run in a terminal")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat the passphrase: ") != first:
        raise UsageError("the passphrases do not match")
    return first


# -- internals --------------------------------------------------------------------------


def _passphrase_from_environment(path: Path) -> str:
    if PASSPHRASE_ENV in os.environ:
        return os.environ[PASSPHRASE_ENV]
    return read_passphrase(f"Passphrase for {path}: ")


def _account_from_key(private_key: str | bytes | None) -> LocalAccount:
    from eth_account import Account

    if isinstance(private_key, str):
        match = _PRIVATE_KEY.fullmatch(private_key.strip())
        raw = bytes.fromhex(match.group(1)) if match else b""
    else:
        raw = private_key or b""
    if len(raw) != 32:
        # never echo the input: it may be a key with a typo
        raise UsageError("not a private key (expected 64 hex digits)")
    try:
        account: LocalAccount = Account.from_key(raw)
    except (ValueError, TypeError):
        raise UsageError("not a valid secp256k1 private key") from None
    return account


def _write_keystore(
    path: Path, account: LocalAccount, passphrase: str, *, overwrite: bool, work_factor: int | None
) -> None:
    from eth_account import Account

    if not passphrase:
        raise UsageError("refusing an empty passphrase")
    if work_factor is not None and (work_factor < 2 or work_factor & (work_factor - 1)):
        raise UsageError("the scrypt work factor must be a power of two")
    if not overwrite and path.exists():
        raise UsageError(f"wallet {str(path)!r} already exists; not overwriting")
    keystore = Account.encrypt(
        account.key, passphrase, kdf="scrypt", iterations=work_factor or DEFAULT_WORK_FACTOR
    )
    data = json.dumps(keystore, indent=2).encode() + b"\n"
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                # link() fails if the name exists: an atomic "create, never replace"
                os.link(temporary, path)
            except FileExistsError:
                raise UsageError(f"wallet {str(path)!r} already exists; not overwriting") from None
        _fsync_directory(path.parent)
    except OSError as exc:
        raise StoreError(f"cannot write wallet {str(path)!r}: {exc.strerror}") from None
    finally:
        with suppress(OSError):  # the error that matters is already on its way
            temporary.unlink(missing_ok=True)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_keystore(path: Path) -> dict[str, Any]:
    name = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEYSTORE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read wallet {name!r}: {exc.strerror}") from None
    if len(data) > MAX_KEYSTORE_BYTES:
        raise UsageError(f"{name!r} is not a keystore (larger than {MAX_KEYSTORE_BYTES} bytes)")
    try:
        keystore = json.loads(data)
    except (ValueError, RecursionError):
        raise UsageError(f"{name!r} is not a keystore (not JSON)") from None
    if not isinstance(keystore, dict):
        raise UsageError(f"{name!r} is not a keystore (not a JSON object)")
    problem = _keystore_problem(keystore)
    if problem:
        raise UsageError(f"{name!r} is not a V3 keystore ({problem})")
    return keystore


def _keystore_problem(keystore: dict[str, Any]) -> str | None:
    """What makes ``keystore`` unacceptable, or None; bounds the work decrypting will take."""
    if keystore.get("version") != 3:
        return "version is not 3"
    crypto = keystore.get("crypto", keystore.get("Crypto"))
    if not isinstance(crypto, dict):
        return "no crypto section"
    if crypto.get("cipher") != "aes-128-ctr":
        return "cipher is not aes-128-ctr"
    cipherparams = crypto.get("cipherparams")
    if not isinstance(cipherparams, dict) or not _is_hex(cipherparams.get("iv"), 32):
        return "bad cipher parameters"
    if not _is_hex(crypto.get("ciphertext"), 64) or not _is_hex(crypto.get("mac"), 64):
        return "bad ciphertext or mac"
    params = crypto.get("kdfparams")
    if not isinstance(params, dict) or params.get("dklen") != 32:
        return "bad key derivation parameters"
    if not _is_hex(params.get("salt"), None):
        return "bad salt"
    kdf = crypto.get("kdf")
    if kdf == "scrypt":
        n, r, p = params.get("n"), params.get("r"), params.get("p")
        if type(n) is not int or type(r) is not int or type(p) is not int:
            return "bad scrypt parameters"
        if (
            n < 2
            or r < 1
            or p < 1
            or n & (n - 1)
            or n > MAX_SCRYPT_N
            or r > MAX_SCRYPT_R
            or p > MAX_SCRYPT_P
            or 128 * n * r > MAX_SCRYPT_MEMORY
        ):
            return "scrypt parameters out of bounds"
    elif kdf == "pbkdf2":
        rounds = params.get("c")
        if params.get("prf") != "hmac-sha256":
            return "pbkdf2 prf is not hmac-sha256"
        if type(rounds) is not int or not 0 < rounds <= MAX_PBKDF2_ROUNDS:
            return "pbkdf2 rounds out of bounds"
    else:
        return "kdf is neither scrypt nor pbkdf2"
    address = keystore.get("address")
    if address is not None and _normalise_address(address) is None:
        return "bad address field"
    return None


def _is_hex(value: object, length: int | None) -> bool:
    if not isinstance(value, str) or len(value) > 1024 or len(value) % 2:
        return False
    return (length is None or len(value) == length) and _HEX.fullmatch(value) is not None


def _normalise_address(value: object) -> str | None:
    """40 lowercase hex digits of an address field (with or without 0x), or None."""
    if not isinstance(value, str):
        return None
    digits = value[2:] if value[:2] in ("0x", "0X") else value
    if len(digits) != 40 or not _HEX.fullmatch(digits):
        return None
    return digits.lower()
