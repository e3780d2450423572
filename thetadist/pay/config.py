"""Which chain and which TicketPool a command talks to.

Each value comes from the first of: a command-line flag, the environment
(``THETADIST_RPC``, ``THETADIST_CONTRACT``), a TOML file — ``--config PATH``, else
``./thetadist-chain.toml`` when it exists — holding::

    [chain]
    rpc = "http://127.0.0.1:8545"
    contract = "0x…"

``thetadist contract deploy --save FILE`` writes that file.  Every problem is one
:class:`~thetadist.errors.UsageError` line that says how to fix it.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from eth_utils.address import to_checksum_address

from thetadist.errors import StoreError, UsageError

RPC_ENV = "THETADIST_RPC"
CONTRACT_ENV = "THETADIST_CONTRACT"
DEFAULT_CONFIG = Path("thetadist-chain.toml")
MAX_CONFIG_BYTES = 64 * 1024

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class ChainConfig:
    rpc: str | None = None
    contract: str | None = None  # checksummed when set

    def __post_init__(self) -> None:
        if self.rpc is not None:
            object.__setattr__(self, "rpc", parse_rpc_url(self.rpc))
        if self.contract is not None:
            object.__setattr__(self, "contract", parse_address(self.contract, "contract"))

    @classmethod
    def resolve(
        cls,
        *,
        rpc: str | None = None,
        contract: str | None = None,
        config: Path | None = None,
        environ: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ChainConfig:
        """Flags over environment over file; ``config`` must exist when given, the default
        file is read only if it exists.  Values are validated, absent ones stay None."""
        env = os.environ if environ is None else environ
        if config is not None:
            from_file = cls.load(config)
        else:
            default = (cwd or Path.cwd()) / DEFAULT_CONFIG
            from_file = cls.load(default) if default.is_file() else cls()
        return cls(
            rpc=rpc or env.get(RPC_ENV) or from_file.rpc,
            contract=contract or env.get(CONTRACT_ENV) or from_file.contract,
        )

    @classmethod
    def load(cls, path: Path) -> ChainConfig:
        """Read the ``[chain]`` table of a TOML file."""
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError:
            raise UsageError(f"config file {str(path)!r} does not exist") from None
        except OSError as problem:
            raise UsageError(f"cannot read config file {str(path)!r}: {problem.strerror}") from None
        if len(data) > MAX_CONFIG_BYTES:
            raise UsageError(f"config file {str(path)!r} is too large to be a chain config")
        try:
            document = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as problem:
            raise UsageError(f"config file {str(path)!r} is not valid TOML: {problem}") from None
        table = document.get("chain", {})
        if not isinstance(table, dict):
            raise UsageError(f"config file {str(path)!r}: [chain] must be a table")
        values: dict[str, str | None] = {}
        for key in ("rpc", "contract"):
            value = table.get(key)
            if value is not None and not isinstance(value, str):
                raise UsageError(f"config file {str(path)!r}: chain.{key} must be a string")
            values[key] = value
        try:
            return cls(rpc=values["rpc"], contract=values["contract"])
        except UsageError as problem:
            raise UsageError(f"config file {str(path)!r}: {problem}") from None

    def save(self, path: Path) -> None:
        """Write this config as a ``[chain]`` table (replacing the file atomically)."""
        lines = ["[chain]"]
        for key, value in (("rpc", self.rpc), ("contract", self.contract)):
            if value is not None:
                # a JSON string with ASCII escapes is a valid TOML basic string
                lines.append(f"{key} = {json.dumps(value)}")
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(temporary, path)
        except OSError as problem:
            temporary.unlink(missing_ok=True)
            raise StoreError(
                f"cannot write config file {str(path)!r}: {problem.strerror}"
            ) from None

    def require_rpc(self) -> str:
        if self.rpc is None:
            raise UsageError(
                f'no chain RPC: pass --rpc URL, set {RPC_ENV}, or write rpc = "URL" under '
                f"[chain] in {DEFAULT_CONFIG} (or --config FILE)"
            )
        return self.rpc

    def require_contract(self) -> str:
        if self.contract is None:
            raise UsageError(
                f"no TicketPool address: pass --contract ADDRESS, set {CONTRACT_ENV}, or write "
                f'contract = "0x..." under [chain] in {DEFAULT_CONFIG} (or --config FILE); '
                "`thetadist contract deploy --save FILE` writes one"
            )
        return self.contract


def parse_rpc_url(text: str) -> str:
    url = text.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"not an HTTP(S) JSON-RPC URL: {text[:80]!r}")
    return url


def parse_address(text: str, what: str = "address") -> str:
    """A 0x-prefixed address, all lowercase or correctly checksummed; returns the checksum."""
    value = text.strip()
    if not _HEX_ADDRESS.fullmatch(value):
        raise UsageError(f"{what} is not a 0x-prefixed 20-byte hex address: {text[:60]!r}")
    checksummed = str(to_checksum_address(value))
    if value != value.lower() and value != checksummed:
        raise UsageError(f"{what} {value} has a wrong checksum (mistyped?)")
    return checksummed
