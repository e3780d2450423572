"""Compile ``contracts/TicketPool.vy`` into its committed artifact, ``contracts/TicketPool.json``.

The artifact (ABI + creation bytecode) is committed so that deploying needs no compiler at run
time; vyper is a development dependency only.  ``python -m thetadist.pay.compile`` rewrites the
artifact after the contract changes, and a test recompiles and compares it byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CONTRACT = "TicketPool"
COMPILER_VERSION = "0.4.3"
EVM_VERSION = "london"
CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
SOURCE_PATH = CONTRACTS_DIR / f"{CONTRACT}.vy"
ARTIFACT_PATH = CONTRACTS_DIR / f"{CONTRACT}.json"


def build_artifact(source_path: Path = SOURCE_PATH) -> dict[str, Any]:
    """Compile the contract and return the artifact dict (what ``render`` writes)."""
    import vyper  # a development dependency: only this tool needs it

    if vyper.__version__ != COMPILER_VERSION:
        raise RuntimeError(
            f"vyper {COMPILER_VERSION} is required to reproduce the artifact, "
            f"found {vyper.__version__}"
        )
    source = source_path.read_text(encoding="utf-8")
    # The pragmas in the source pin the EVM version (london: no PUSH0); the path passed is
    # fixed so the output does not depend on where the checkout lives.
    output = vyper.compile_code(
        source, contract_path=f"{CONTRACT}.vy", output_formats=["abi", "bytecode"]
    )
    return {
        "contract": CONTRACT,
        "compiler": f"vyper {COMPILER_VERSION}",
        "evm_version": EVM_VERSION,
        "source_sha256": hashlib.sha256(source.encode("utf-8")).hexdigest(),
        "abi": output["abi"],
        "bytecode": output["bytecode"],
    }


def render(artifact: dict[str, Any]) -> str:
    """The artifact's canonical text, as committed."""
    return json.dumps(artifact, indent=2) + "\n"


def main() -> None:
    artifact = build_artifact()
    ARTIFACT_PATH.write_text(render(artifact), encoding="utf-8")
    size = (len(artifact["bytecode"]) - 2) // 2
    print(f"wrote {ARTIFACT_PATH} ({size} bytes of creation code)")


if __name__ == "__main__":
    main()
