"""The TicketPool contract on an EVM chain, through web3.py (synchronous).

:class:`Chain` is a connection: any EVM JSON-RPC node over HTTP (:meth:`Chain.connect`), or an
in-process py-evm chain (:meth:`Chain.embedded`) for the demo and fast tests.
:class:`TicketPool` wraps one deployment of ``contracts/TicketPool.vy``.

Transactions are signed locally with an ``eth_account`` key and sent raw, so any node works,
including ones that hold no keys; EIP-1559 fees when the node's blocks carry a base fee, a
legacy gas price otherwise.  Every failure — node unreachable, a revert (with its reason), a
receipt that does not come, a malformed address — raises :class:`~thetadist.errors.ChainError`
with one line.  One lock serialises all use of a connection: the swarm reads pools from worker
threads, and a transaction's nonce must not race another's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import requests
from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError as EthUtilsValidationError
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import RPCEndpoint, TxParams, TxReceipt, Wei

from thetadist.errors import ChainError
from thetadist.pay.compile import ARTIFACT_PATH
from thetadist.pay.ledger import VoucherLike as LedgerVoucher

#: redeemBatch's bound (``MAX_BATCH`` in the contract); split longer lists.
MAX_BATCH = 256
DEFAULT_RECEIPT_TIMEOUT = 120.0
#: Added to the node's gas estimate: state can move between estimate and inclusion (another
#: redemption, a top-up), and an out-of-gas failure costs more than the margin.
GAS_MARGIN_PERCENT = 20
#: Tip when the node cannot suggest one (eth_maxPriorityFeePerGas is not universal).
FALLBACK_PRIORITY_FEE = 10**9

#: Rejected.reason codes of the contract.
REJECT_REASONS: dict[int, str] = {
    1: "malformed signature",
    2: "signer is not the payer",
    3: "wrong epoch",
    4: "payer flagged",
}

_DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)

T = TypeVar("T")


class VoucherLike(LedgerVoucher, Protocol):
    """What :meth:`TicketPool.redeem_batch` reads from a voucher (e.g. ``SignedVoucher``)."""

    @property
    def signature(self) -> bytes: ...


@dataclass(frozen=True)
class PoolState:
    deposit: int
    collateral: int
    epoch: int
    unlock_at: int  # block timestamp after which the payer may withdraw; 0: no unlock pending
    flagged: bool  # overdrew once: collateral burned, never redeemable or fundable again

    @property
    def unlocking(self) -> bool:
        return self.unlock_at != 0


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    gas_used: int


@dataclass(frozen=True)
class RedeemResult:
    tx_hash: str
    gas_used: int
    paid: list[int]  # per voucher, in order: 0 when rejected or already claimed
    rejected: list[int]  # indices of vouchers the contract refused
    reasons: dict[int, str] = field(default_factory=dict)  # rejected index -> why

    @property
    def total(self) -> int:
        return sum(self.paid)


@cache
def load_artifact() -> dict[str, Any]:
    """The committed TicketPool artifact (ABI and creation bytecode)."""
    artifact: dict[str, Any] = json.loads(ARTIFACT_PATH.read_text(encoding="utf-8"))
    return artifact


def checksum(address: str | bytes) -> ChecksumAddress:
    """An address as a checksummed hex string; ChainError if it is not one."""
    try:
        if isinstance(address, bytes):
            if len(address) != 20:
                raise ValueError
            return to_checksum_address(address)
        if len(address) != 42 or not address.startswith(("0x", "0X")):
            raise ValueError
        return to_checksum_address(address)
    except ValueError:
        raise ChainError(f"not an address: {_short(address)}") from None


class Chain:
    """One EVM node connection; safe to share between threads."""

    def __init__(
        self,
        w3: Web3,
        *,
        description: str,
        receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT,
        tester: Any = None,
        extra_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._w3 = w3
        self._lock = threading.RLock()
        self._description = description
        self._receipt_timeout = receipt_timeout
        self._tester = tester  # eth-tester, for the embedded chain's faucet and time travel
        self._errors: tuple[type[BaseException], ...] = (
            Web3Exception,
            requests.RequestException,
            OSError,
            EthUtilsValidationError,
            *extra_errors,
        )
        self.chain_id: int = self.call("read the chain id", lambda: int(w3.eth.chain_id))
        self._client = "embedded" if tester is not None else self._client_version()

    @classmethod
    def connect(
        cls,
        rpc_url: str,
        *,
        timeout: float = 10.0,
        receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT,
    ) -> Chain:
        """Connect to a JSON-RPC node over HTTP(S); ChainError if it does not answer."""
        parts = urlsplit(rpc_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ChainError(f"not an HTTP JSON-RPC URL: {_short(rpc_url)}")
        provider = Web3.HTTPProvider(
            rpc_url,
            request_kwargs={"timeout": timeout},
            # web3's default retries timeouts five times with backoff, so a silent node would
            # take 5 × timeout to report; retry only dropped connections, briefly.
            exception_retry_configuration=ExceptionRetryConfiguration(
                errors=(requests.ConnectionError,), retries=2, backoff_factor=0.1
            ),
            # web3 validates every eth_call against the node's chain id, asking for it anew
            # each time: half the requests of a payer's pool read.  The chain id and client
            # of a node do not change under a live connection.
            cache_allowed_requests=True,
            cacheable_requests={RPCEndpoint("eth_chainId"), RPCEndpoint("web3_clientVersion")},
        )
        return cls(Web3(provider), description=rpc_url, receipt_timeout=receipt_timeout)

    @classmethod
    def embedded(cls) -> Chain:
        """A fresh in-process chain (eth-tester on py-evm) with prefunded accounts."""
        from eth_tester import EthereumTester, PyEVMBackend
        from eth_tester.exceptions import TransactionFailed, ValidationError
        from web3.providers.eth_tester import EthereumTesterProvider

        tester = EthereumTester(PyEVMBackend())
        return cls(
            Web3(EthereumTesterProvider(tester)),
            description="the embedded chain",
            tester=tester,
            extra_errors=(TransactionFailed, ValidationError),
        )

    def __repr__(self) -> str:
        return f"Chain({self._description!r}, chain_id={self.chain_id})"

    # -- reads and test helpers ---------------------------------------------------------

    def balance(self, address: str | bytes) -> int:
        account = checksum(address)
        return self.call(
            f"read the balance of {account}", lambda: self._w3.eth.get_balance(account)
        )

    def now(self) -> int:
        """The latest block's timestamp (the contract's clock)."""
        return self.call(
            "read the latest block", lambda: int(self._w3.eth.get_block("latest")["timestamp"])
        )

    def faucet(self, address: str | bytes, amount_wei: int) -> None:
        """Give ``address`` coins for tests and demos (embedded chain or anvil only)."""
        account = checksum(address)
        if self._tester is not None:

            def send() -> None:
                rich = self._w3.eth.accounts[0]
                tx_hash = self._w3.eth.send_transaction(
                    {"from": rich, "to": account, "value": Wei(amount_wei)}
                )
                self._w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self._receipt_timeout)

            self.call(f"fund {account}", send)
        elif self._is_anvil():
            self.call(
                f"set the balance of {account}",
                lambda: self._rpc(
                    "anvil_setBalance",
                    [account, hex(self._w3.eth.get_balance(account) + amount_wei)],
                ),
            )
        else:
            raise ChainError(
                f"no faucet on {self._description} (only on the embedded chain and anvil); "
                f"send coins to {account} from a funded wallet"
            )

    def advance_time(self, seconds: int) -> None:
        """Move the chain's clock forward and mine a block (embedded chain or anvil only)."""
        if seconds <= 0:
            raise ChainError(f"the clock only moves forward, not by {seconds} s")
        if self._tester is not None:
            tester = self._tester
            self.call(
                "advance the embedded chain's clock",
                lambda: tester.time_travel(self.now() + seconds),
            )
        elif self._is_anvil():

            def travel() -> None:
                self._rpc("evm_increaseTime", [seconds])
                self._rpc("evm_mine", [])

            self.call("advance anvil's clock", travel)
        else:
            raise ChainError(f"cannot move the clock of {self._description}")

    # -- plumbing shared with TicketPool ------------------------------------------------

    @property
    def w3(self) -> Web3:
        """The underlying web3 object; hold :meth:`call` around any use of it."""
        return self._w3

    def call(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action`` under the connection lock; map every failure to one ChainError."""
        with self._lock:
            try:
                return action()
            except ChainError:
                raise
            except self._errors as problem:
                raise ChainError(
                    f"cannot {what} on {self._description}: {_explain(problem)}"
                ) from None

    def transact(self, what: str, account: LocalAccount, tx: TxParams) -> TxReceipt:
        """Sign ``tx`` with ``account``, send it and wait for a successful receipt."""

        def submit() -> tuple[HexBytes, dict[str, Any]]:
            # one lock hold from nonce to send: two threads must not take the same nonce
            eth = self._w3.eth
            params: dict[str, Any] = dict(tx)
            params["from"] = account.address
            params["chainId"] = self.chain_id
            params["nonce"] = eth.get_transaction_count(account.address, "pending")
            params.setdefault("value", 0)
            params["gas"] = _with_margin(eth.estimate_gas(cast(TxParams, params)))
            params.update(self._fees())
            signed = account.sign_transaction(params)
            return eth.send_raw_transaction(signed.raw_transaction), params

        tx_hash, params = self.call(what, submit)
        receipt = self._wait_for_receipt(what, tx_hash)
        if receipt["status"] != 1:
            reason = self.call(what, lambda: self._replay_reason(params, receipt))
            raise ChainError(
                f"cannot {what} on {self._description}: transaction {tx_hash.to_0x_hex()} "
                f"reverted{reason}"
            )
        return receipt

    # -- internals ----------------------------------------------------------------------

    def _fees(self) -> dict[str, int]:
        eth = self._w3.eth
        base_fee = eth.get_block("latest").get("baseFeePerGas")
        if base_fee is None:  # a chain without EIP-1559
            return {"gasPrice": int(eth.gas_price)}
        try:
            tip = int(eth.max_priority_fee)
        except (Web3RPCError, ValueError):
            tip = FALLBACK_PRIORITY_FEE
        # twice the base fee rides out six full blocks of base-fee increases
        return {"maxFeePerGas": 2 * int(base_fee) + tip, "maxPriorityFeePerGas": tip}

    def _wait_for_receipt(self, what: str, tx_hash: HexBytes) -> TxReceipt:
        # Polls without holding the lock in between, so other threads' reads (the swarm
        # checking pools) are not held up for the seconds a block takes.
        deadline = time.monotonic() + self._receipt_timeout
        pause = 0.02
        while True:
            receipt = self.call(what, lambda: self._receipt_or_none(tx_hash))
            if receipt is not None:
                return receipt
            if time.monotonic() >= deadline:
                raise ChainError(
                    f"cannot {what} on {self._description}: no receipt for transaction "
                    f"{tx_hash.to_0x_hex()} within {self._receipt_timeout:g} s (the node may "
                    "be slow or the fee too low)"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _receipt_or_none(self, tx_hash: HexBytes) -> TxReceipt | None:
        try:
            return self._w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None

    def _replay_reason(self, params: dict[str, Any], receipt: TxReceipt) -> str:
        """The revert reason of a mined failure, by replaying it as a call (best effort)."""
        call = {key: params[key] for key in ("from", "to", "data", "value", "gas") if key in params}
        try:
            self._w3.eth.call(call, block_identifier=max(receipt["blockNumber"] - 1, 0))  # type: ignore[arg-type]
        except self._errors as problem:
            return f": {_explain(problem)}"
        return ""

    def _client_version(self) -> str:
        try:
            return self.call("read the client version", lambda: str(self._w3.client_version))
        except ChainError:
            return "unknown"  # web3_clientVersion is optional; it only enables test helpers

    def _is_anvil(self) -> bool:
        return self._client.lower().startswith("anvil/")

    def _rpc(self, method: str, params: list[Any]) -> Any:
        response = self._w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in response:
            raise ChainError(f"{method} failed: {_explain_rpc_error(response['error'])}")
        return response.get("result")


class TicketPool:
    """One TicketPool deployment.  Amounts are integer wei; addresses are hex or 20 bytes."""

    def __init__(self, chain: Chain, address: str | bytes) -> None:
        self.chain = chain
        self.address: ChecksumAddress = checksum(address)
        self.address_bytes: bytes = bytes.fromhex(self.address[2:])
        self._contract = chain.w3.eth.contract(address=self.address, abi=load_artifact()["abi"])
        self._topics = {
            event_abi_to_log_topic(item): item["name"]
            for item in load_artifact()["abi"]
            if item["type"] == "event"
        }

    def __repr__(self) -> str:
        return f"TicketPool({self.address}, chain_id={self.chain.chain_id})"

    @classmethod
    def deploy(
        cls,
        chain: Chain,
        deployer: LocalAccount,
        *,
        collateral_ratio_bps: int = 10000,
        unlock_delay: int = 86400,
    ) -> TicketPool:
        if collateral_ratio_bps < 0 or unlock_delay < 0:
            raise ChainError("the collateral ratio and the unlock delay cannot be negative")
        arguments = abi_encode(["uint256", "uint256"], [collateral_ratio_bps, unlock_delay])
        data = load_artifact()["bytecode"] + arguments.hex()
        receipt = chain.transact("deploy TicketPool", deployer, TxParams(data=data))
        address = receipt["contractAddress"]
        if address is None:
            raise ChainError("the deployment receipt names no contract address")
        return cls(chain, address)

    @classmethod
    def at(cls, chain: Chain, address: str | bytes) -> TicketPool:
        """Attach to a deployment after checking that the code there is a TicketPool."""
        pool = cls(chain, address)
        code = chain.call(
            f"read the code at {pool.address}", lambda: chain.w3.eth.get_code(pool.address)
        )
        if not code:
            raise ChainError(f"no contract at {pool.address} on chain {chain.chain_id}")
        expected = keccak(
            _DOMAIN_TYPEHASH
            + keccak(text="thetadist")
            + keccak(text="1")
            + abi_encode(["uint256", "address"], [chain.chain_id, pool.address])
        )
        try:
            separator = pool.domain_separator()
        except ChainError:
            separator = b""
        if separator != expected:
            raise ChainError(f"the contract at {pool.address} is not a thetadist TicketPool")
        return pool

    # -- reads ----------------------------------------------------------------------------

    def pool(self, payer: str | bytes) -> PoolState:
        account = checksum(payer)
        deposit, collateral, epoch, unlock_at, flagged = self._read(
            f"read the pool of {account}", "pool", account
        )
        return PoolState(int(deposit), int(collateral), int(epoch), int(unlock_at), bool(flagged))

    def claimed(self, payer: str | bytes, payee: str | bytes, epoch: int) -> int:
        """What ``payee`` has been credited from ``payer``'s vouchers of ``epoch`` (0 for an
        epoch older than the latest one the pair redeemed in)."""
        return int(self._read("read a claim", "claimed", checksum(payer), checksum(payee), epoch))

    def earnings(self, address: str | bytes) -> int:
        account = checksum(address)
        return int(self._read(f"read the earnings of {account}", "earnings", account))

    def burned(self) -> int:
        return int(self._read("read the burned total", "burned"))

    def collateral_ratio_bps(self) -> int:
        return int(self._read("read the collateral ratio", "collateralRatio"))

    def unlock_delay(self) -> int:
        return int(self._read("read the unlock delay", "unlockDelay"))

    def domain_separator(self) -> bytes:
        return bytes(self._read("read the domain separator", "domainSeparator"))

    # -- payer ----------------------------------------------------------------------------

    def fund(self, account: LocalAccount, *, deposit: int, collateral: int) -> TxResult:
        """Add to the sender's own pool; cancels its pending unlock."""
        _check_amounts(deposit, collateral)
        return self._send("fund the pool", account, "fund", [collateral], deposit + collateral)

    def fund_for(
        self, account: LocalAccount, payer: str | bytes, *, deposit: int, collateral: int
    ) -> TxResult:
        """Add to someone else's pool; never cancels their unlock."""
        _check_amounts(deposit, collateral)
        target = checksum(payer)
        return self._send(
            f"fund the pool of {target}",
            account,
            "fundFor",
            [target, collateral],
            deposit + collateral,
        )

    def request_unlock(self, account: LocalAccount) -> TxResult:
        return self._send("request an unlock", account, "requestUnlock", [])

    def withdraw(self, account: LocalAccount) -> TxResult:
        return self._send("withdraw the pool", account, "withdraw", [])

    # -- payee ----------------------------------------------------------------------------

    def redeem(self, account: LocalAccount, voucher: VoucherLike) -> RedeemResult:
        """Redeem one voucher; unlike :meth:`redeem_batch`, an invalid one is a ChainError."""
        payer, payee, epoch, cumulative, *_ = _voucher_tuple(0, voucher)
        receipt = self._transact(
            "redeem a voucher",
            account,
            "redeem",
            [payer, payee, epoch, cumulative, bytes(voucher.signature)],
        )
        return self._redeem_result(receipt, 1)

    def redeem_batch(self, account: LocalAccount, vouchers: Sequence[VoucherLike]) -> RedeemResult:
        """Redeem up to :data:`MAX_BATCH` vouchers in one transaction.  Invalid vouchers are
        skipped (listed in ``rejected``), not fatal.  Group vouchers by payee: the contract
        writes a payee's earnings once per run of consecutive vouchers to it."""
        if not vouchers:
            return RedeemResult(tx_hash="", gas_used=0, paid=[], rejected=[])
        if len(vouchers) > MAX_BATCH:
            raise ChainError(f"at most {MAX_BATCH} vouchers per batch, got {len(vouchers)}")
        rows = [_voucher_tuple(index, voucher) for index, voucher in enumerate(vouchers)]
        receipt = self._transact(f"redeem {len(rows)} vouchers", account, "redeemBatch", [rows])
        return self._redeem_result(receipt, len(rows))

    def withdraw_earnings(self, account: LocalAccount) -> TxResult:
        return self._send("withdraw earnings", account, "withdrawEarnings", [])

    # -- internals ------------------------------------------------------------------------

    def _read(self, what: str, function: str, *args: Any) -> Any:
        bound = self._contract.get_function_by_name(function)(*args)
        return self.chain.call(what, bound.call)

    def _transact(
        self, what: str, account: LocalAccount, function: str, args: list[Any], value: int = 0
    ) -> TxReceipt:
        data = self._contract.encode_abi(function, args=args)
        return self.chain.transact(
            what, account, TxParams(to=self.address, data=data, value=Wei(value))
        )

    def _send(
        self, what: str, account: LocalAccount, function: str, args: list[Any], value: int = 0
    ) -> TxResult:
        receipt = self._transact(what, account, function, args, value)
        return TxResult(receipt["transactionHash"].to_0x_hex(), int(receipt["gasUsed"]))

    def _redeem_result(self, receipt: TxReceipt, count: int) -> RedeemResult:
        # Every voucher logs exactly one Redeemed or Rejected, in order (see the contract).
        paid: list[int] = []
        rejected: list[int] = []
        reasons: dict[int, str] = {}
        for log in receipt["logs"]:
            if log["address"].lower() != self.address.lower() or not log["topics"]:
                continue
            name = self._topics.get(bytes(log["topics"][0]))
            if name == "Redeemed":
                event = self._contract.events.Redeemed().process_log(log)
                paid.append(int(event["args"]["paid"]))
            elif name == "Rejected":
                code = int(self._contract.events.Rejected().process_log(log)["args"]["reason"])
                reasons[len(paid)] = REJECT_REASONS.get(code, f"reason {code}")
                rejected.append(len(paid))
                paid.append(0)
        if len(paid) != count:
            raise ChainError(
                f"transaction {receipt['transactionHash'].to_0x_hex()} logged {len(paid)} "
                f"outcomes for {count} vouchers; is {self.address} a TicketPool?"
            )
        return RedeemResult(
            receipt["transactionHash"].to_0x_hex(), int(receipt["gasUsed"]), paid, rejected, reasons
        )


def _voucher_tuple(index: int, voucher: VoucherLike) -> tuple[str, str, int, int, int, int, int]:
    signature = bytes(voucher.signature)
    if len(signature) != 65:
        raise ChainError(f"voucher {index}: the signature must be 65 bytes, not {len(signature)}")
    if not 0 <= voucher.epoch < 2**64 or not 0 <= voucher.cumulative < 2**256:
        raise ChainError(f"voucher {index}: epoch or amount out of range")
    return (
        checksum(bytes(voucher.payer)),
        checksum(bytes(voucher.payee)),
        voucher.epoch,
        voucher.cumulative,
        int.from_bytes(signature[:32], "big"),
        int.from_bytes(signature[32:64], "big"),
        signature[64],
    )


def _check_amounts(deposit: int, collateral: int) -> None:
    if deposit < 0 or collateral < 0:
        raise ChainError("amounts cannot be negative")


def _with_margin(estimate: int) -> int:
    return estimate + estimate * GAS_MARGIN_PERCENT // 100


def _explain(problem: BaseException) -> str:
    """One line saying what went wrong, with the revert reason when there is one."""
    if isinstance(problem, ContractLogicError):
        text = problem.message or str(problem)
    elif isinstance(problem, Web3RPCError) and isinstance(problem.rpc_response, dict):
        text = _explain_rpc_error(problem.rpc_response.get("error"))
    elif isinstance(problem, TimeExhausted):
        text = "no receipt in time (the node may be slow or the fee too low)"
    elif isinstance(problem, requests.Timeout):  # before ConnectionError: ConnectTimeout is both
        text = "the node did not answer in time"
    elif isinstance(problem, requests.ConnectionError):
        text = "connection refused or host unreachable"
    else:
        text = str(problem) or type(problem).__name__
    return _one_line(text)


def _explain_rpc_error(error: Any) -> str:
    if isinstance(error, dict) and error.get("message"):
        return _one_line(str(error["message"]))
    return _one_line(str(error))


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
