"""Gas per voucher of the TicketPool contract, measured on a real anvil.

Cases: one pair's first ``redeem`` (to a payee without, then with earnings already) and a
repeat ``redeem``; ``redeemBatch`` of 8, 32 and 128 first-time vouchers from distinct payers to one
payee (the realistic shape: a seeder redeeming what its fetchers signed), then the same
payers' next vouchers (repeat).  Figures are the transaction's gas (21,000 base included)
divided by the vouchers in it.  Target: under 40,000 gas per voucher in a batch of 32.

``python -m bench.pay_gas`` starts anvil itself (``$THETADIST_ANVIL``, else
``.tools/node_modules/.bin/anvil``, else PATH; ``tests/anvil.py`` uses the same launcher);
``--rpc URL`` measures on a running node that has anvil's test methods instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount

from thetadist.pay.chain import Chain, TicketPool

REPO_ROOT = Path(__file__).resolve().parent.parent
ANVIL_ENV = "THETADIST_ANVIL"
ANVIL_START_TIMEOUT = 20.0
TARGET_BATCH = 32
TARGET_GAS_PER_VOUCHER = 40_000
BATCH_SIZES = (8, 32, 128)
PAYEE_PRICE = 10**12  # wei a voucher adds: realistic size (a few nonzero calldata bytes)


class AnvilMissing(RuntimeError):
    pass


def find_anvil() -> str:
    """The anvil binary: ``$THETADIST_ANVIL``, the repository's npm install, or PATH."""
    configured = os.environ.get(ANVIL_ENV)
    if configured:
        if not os.access(configured, os.X_OK):
            raise AnvilMissing(f"{ANVIL_ENV}={configured} is not an executable")
        return configured
    local = REPO_ROOT / ".tools" / "node_modules" / ".bin" / "anvil"
    if os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("anvil")
    if found is None:
        raise AnvilMissing(
            "anvil is not installed: run `npm install --prefix .tools "
            f"@foundry-rs/anvil-linux-amd64` (as .ci/run does), set {ANVIL_ENV}, "
            "or put anvil on PATH"
        )
    return found


@contextmanager
def running_anvil(*extra_args: str) -> Iterator[str]:
    """Run anvil on a free 127.0.0.1 port; yield its URL once it answers; kill it after."""
    binary = find_anvil()
    for _attempt in range(3):  # the probed port can be taken before anvil binds it
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", str(port), "--silent", *extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + ANVIL_START_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                if _answers(url):
                    yield url
                    return
                time.sleep(0.05)
            if process.poll() is None:
                raise RuntimeError(f"anvil did not answer on {url} in {ANVIL_START_TIMEOUT:.0f} s")
        finally:
            if process.poll() is None:
                process.kill()
            _, errors = process.communicate(timeout=10)
        message = errors.decode(errors="replace").strip()
        if "address already in use" not in message.lower():
            raise RuntimeError(f"anvil exited with status {process.returncode}: {message[-500:]}")
    raise RuntimeError("anvil found no free port in three attempts")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    request = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    try:
        reply = httpx.post(url, json=request, timeout=1)
        return reply.status_code == 200 and "result" in reply.json()
    except (httpx.HTTPError, ValueError):
        return False


@dataclass(frozen=True)
class ReferenceVoucher:
    """A voucher signed by eth-account's reference EIP-712 code (slow, but independent of
    thetadist's fast signer; the tests use it too)."""

    payer: bytes
    payee: bytes
    epoch: int
    cumulative: int
    signature: bytes


def voucher_typed_data(
    payer: str, payee: str, epoch: int, cumulative: int, *, chain_id: int, contract: str
) -> dict[str, Any]:
    """The EIP-712 message of a voucher, as eth-account's ``sign_typed_data`` takes it."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Voucher": [
                {"name": "payer", "type": "address"},
                {"name": "payee", "type": "address"},
                {"name": "epoch", "type": "uint64"},
                {"name": "cumulativeAmount", "type": "uint256"},
            ],
        },
        "primaryType": "Voucher",
        "domain": {
            "name": "thetadist",
            "version": "1",
            "chainId": chain_id,
            "verifyingContract": contract,
        },
        "message": {
            "payer": payer,
            "payee": payee,
            "epoch": epoch,
            "cumulativeAmount": cumulative,
        },
    }


def sign_voucher(
    payer: LocalAccount, payee: str, epoch: int, cumulative: int, *, chain_id: int, contract: str
) -> ReferenceVoucher:
    message = voucher_typed_data(
        payer.address, payee, epoch, cumulative, chain_id=chain_id, contract=contract
    )
    signed = payer.sign_typed_data(full_message=message)
    return ReferenceVoucher(
        bytes.fromhex(payer.address[2:]),
        bytes.fromhex(payee[2:]),
        epoch,
        cumulative,
        bytes(signed.signature),
    )


def measure_gas(rpc_url: str) -> dict[str, Any]:
    """Deploy a TicketPool on the anvil at ``rpc_url`` and measure every case.

    Returns ``{"cases": {name: {"vouchers": n, "gas": g, "gas_per_voucher": g / n}},
    "target": {...}}``.
    """
    chain = Chain.connect(rpc_url)
    operator: LocalAccount = Account.create()  # deploys, funds pools, sends redemptions
    chain.faucet(operator.address, 10**24)
    pool = TicketPool.deploy(chain, operator, collateral_ratio_bps=10000, unlock_delay=3600)
    payee = Account.create().address
    cases: dict[str, dict[str, float]] = {}

    def sign(payer: LocalAccount, epoch: int, cumulative: int) -> ReferenceVoucher:
        return sign_voucher(
            payer, payee, epoch, cumulative, chain_id=chain.chain_id, contract=pool.address
        )

    def record(name: str, vouchers: int, gas: int) -> None:
        cases[name] = {"vouchers": vouchers, "gas": gas, "gas_per_voucher": gas / vouchers}

    def new_payers(count: int) -> list[LocalAccount]:
        payers: list[LocalAccount] = [Account.create() for _ in range(count)]
        for payer in payers:  # a third party may fund a pool: payers need no coins here
            pool.fund_for(operator, payer.address, deposit=10**18, collateral=10**18)
        return payers

    first, second = new_payers(2)
    result = pool.redeem(operator, sign(first, 0, PAYEE_PRICE))
    record("redeem first (new payee)", 1, result.gas_used)  # also creates the payee's earnings
    result = pool.redeem(operator, sign(second, 0, PAYEE_PRICE))
    record("redeem first", 1, result.gas_used)
    result = pool.redeem(operator, sign(second, 0, 2 * PAYEE_PRICE))
    record("redeem repeat", 1, result.gas_used)

    for size in BATCH_SIZES:
        payers = new_payers(size)
        for label, cumulative in (("first", PAYEE_PRICE), ("repeat", 2 * PAYEE_PRICE)):
            batch = [sign(payer, 0, cumulative) for payer in payers]
            outcome = pool.redeem_batch(operator, batch)
            if outcome.rejected or outcome.total != size * PAYEE_PRICE:
                raise RuntimeError(f"batch {size} {label}: unexpected outcome {outcome}")
            record(f"batch {size} {label}", size, outcome.gas_used)

    per_voucher = cases[f"batch {TARGET_BATCH} first"]["gas_per_voucher"]
    return {
        "cases": cases,
        "target": {
            "batch": TARGET_BATCH,
            "gas_per_voucher": per_voucher,
            "limit": TARGET_GAS_PER_VOUCHER,
            "met": per_voucher < TARGET_GAS_PER_VOUCHER,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rpc", help="measure on this anvil instead of starting one")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    options = parser.parse_args()
    try:
        if options.rpc:
            result = measure_gas(options.rpc)
        else:
            with running_anvil() as url:
                result = measure_gas(url)
    except AnvilMissing as problem:
        sys.exit(f"error: {problem}")
    if options.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(report_lines(result)))
    sys.exit(0 if result["target"]["met"] else 1)


def report_lines(result: dict[str, Any]) -> list[str]:
    """The human table of :func:`measure_gas`'s result, with the verdict on the target."""
    lines = [f"{'case':<28}{'vouchers':>9}{'gas':>12}{'gas/voucher':>14}"]
    for name, case in result["cases"].items():
        lines.append(
            f"{name:<28}{case['vouchers']:>9}{case['gas']:>12,}{case['gas_per_voucher']:>14,.0f}"
        )
    target = result["target"]
    verdict = "met" if target["met"] else "NOT met"
    lines.append(
        f"gas per voucher at batch {target['batch']}: {target['gas_per_voucher']:,.0f} "
        f"(target < {target['limit']:,}: {verdict})"
    )
    return lines


if __name__ == "__main__":
    main()
