"""TicketPool, the contract: every rule and the attacks on it, on the embedded EVM (py-evm).

Vouchers are signed with eth-account's reference EIP-712 code (``bench.pay_gas``), not with
thetadist's fast signer, so these tests pin the contract to the standard.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest
import vyper
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3.logs import DISCARD
from web3.types import TxParams, Wei

from bench.pay_gas import ReferenceVoucher, sign_voucher, voucher_typed_data
from thetadist.errors import ChainError
from thetadist.pay.chain import (
    MAX_BATCH,
    Chain,
    PoolState,
    RedeemResult,
    TicketPool,
    load_artifact,
)
from thetadist.pay.compile import ARTIFACT_PATH, SOURCE_PATH, build_artifact, render

DELAY = 1000
DEPOSIT = 10**15
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# Rejected.reason codes (see the contract)
MALFORMED, WRONG_SIGNER, WRONG_EPOCH, FLAGGED = 1, 2, 3, 4


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def chain() -> Chain:
    return Chain.embedded()


@pytest.fixture(scope="module")
def operator(chain: Chain) -> LocalAccount:
    """Deploys, funds pools for payers (fundFor), and sends redemptions."""
    account: LocalAccount = Account.create()
    chain.faucet(account.address, 10**23)
    return account


@pytest.fixture(scope="module")
def pool(chain: Chain, operator: LocalAccount) -> TicketPool:
    return TicketPool.deploy(chain, operator, collateral_ratio_bps=10000, unlock_delay=DELAY)


def wallet(chain: Chain, coins: int = 10**20) -> LocalAccount:
    account: LocalAccount = Account.create()
    chain.faucet(account.address, coins)
    return account


def payer_with_pool(
    pool: TicketPool, operator: LocalAccount, deposit: int = DEPOSIT, collateral: int = DEPOSIT
) -> LocalAccount:
    payer: LocalAccount = Account.create()
    pool.fund_for(operator, payer.address, deposit=deposit, collateral=collateral)
    return payer


def sign(
    pool: TicketPool,
    payer: LocalAccount,
    payee: str,
    cumulative: int,
    *,
    epoch: int = 0,
    chain_id: int | None = None,
    contract: str | None = None,
) -> ReferenceVoucher:
    return sign_voucher(
        payer,
        payee,
        epoch,
        cumulative,
        chain_id=pool.chain.chain_id if chain_id is None else chain_id,
        contract=contract or pool.address,
    )


def with_signature(voucher: ReferenceVoucher, signature: bytes) -> ReferenceVoucher:
    return ReferenceVoucher(
        voucher.payer, voucher.payee, voucher.epoch, voucher.cumulative, signature
    )


def new_address() -> str:
    return str(Account.create().address)


def receipt_events(chain: Chain, pool: TicketPool, tx_hash: str, name: str) -> list[Any]:
    contract = chain.w3.eth.contract(address=pool.address, abi=load_artifact()["abi"])
    receipt = chain.w3.eth.get_transaction_receipt(tx_hash)
    return [entry["args"] for entry in contract.events[name]().process_receipt(receipt, DISCARD)]


def reasons(chain: Chain, pool: TicketPool, result: RedeemResult) -> list[int]:
    return [int(args["reason"]) for args in receipt_events(chain, pool, result.tx_hash, "Rejected")]


def call_reverts(
    chain: Chain, pool: TicketPool, function: str, *args: Any, sender: str, value: int = 0
) -> str:
    """Call a pool function with raw arguments (no client-side checks); return the error."""
    contract = chain.w3.eth.contract(address=pool.address, abi=load_artifact()["abi"])
    bound = contract.get_function_by_name(function)(*args)
    tx = TxParams({"from": sender, "value": Wei(value)})
    with pytest.raises(ChainError) as failure:
        chain.call("call", lambda: bound.call(tx))
    return str(failure.value)


def deploy_vyper(chain: Chain, deployer: LocalAccount, source: str, *args: str) -> str:
    """Compile a helper contract at test time and deploy it with address arguments."""
    output = vyper.compile_code(source, output_formats=["bytecode"])
    data = output["bytecode"] + "".join(bytes(12).hex() + a[2:].lower() for a in args)
    receipt = chain.transact("deploy a helper", deployer, TxParams(data=data))
    return str(receipt["contractAddress"])


def send(
    chain: Chain, account: LocalAccount, to: str, function: str, *args: int, value: int = 0
) -> None:
    """Transact with a helper contract: ``function`` is a signature like ``fund(uint256)``."""
    data = (
        "0x" + keccak(text=function)[:4].hex() + "".join(a.to_bytes(32, "big").hex() for a in args)
    )
    chain.transact(function, account, TxParams(to=to, data=data, value=Wei(value)))


def view(chain: Chain, address: str, signature: str) -> int:
    data = "0x" + keccak(text=signature)[:4].hex()
    raw = chain.w3.eth.call(TxParams(to=address, data=data))
    return int.from_bytes(raw, "big")


# -- the committed artifact ---------------------------------------------------------------


def test_artifact_is_a_fresh_compile() -> None:
    committed = ARTIFACT_PATH.read_text(encoding="utf-8")
    assert render(build_artifact()) == committed, "run `python -m thetadist.pay.compile`"
    artifact = json.loads(committed)
    assert artifact["compiler"] == "vyper 0.4.3" and artifact["evm_version"] == "london"
    assert artifact["source_sha256"] == hashlib.sha256(SOURCE_PATH.read_bytes()).hexdigest()


def _cbor_item(data: bytes, at: int) -> tuple[Any, int]:
    """Decode one CBOR item (the subset Vyper's metadata uses)."""
    major, info = data[at] >> 5, data[at] & 31
    at += 1
    if info < 24:
        value = info
    else:
        width = {24: 1, 25: 2, 26: 4, 27: 8}[info]
        value = int.from_bytes(data[at : at + width], "big")
        at += width
    if major == 0:
        return value, at
    if major in (2, 3):
        return data[at : at + value], at + value
    if major == 4:
        items = []
        for _ in range(value):
            item, at = _cbor_item(data, at)
            items.append(item)
        return items, at
    if major == 5:
        pairs = {}
        for _ in range(value):
            key, at = _cbor_item(data, at)
            pairs[bytes(key)], at = _cbor_item(data, at)
        return pairs, at
    raise AssertionError(f"unexpected CBOR major type {major}")


def _opcodes(code: bytes) -> list[int]:
    """Walk code as the EVM does: PUSH1..PUSH32 (0x60..0x7f) carry 1..32 data bytes."""
    ops, at = [], 0
    while at < len(code):
        op = code[at]
        ops.append(op)
        at += 1 + (op - 0x5F if 0x60 <= op <= 0x7F else 0)
    assert at == len(code), "the last PUSH runs past the end of the code"
    return ops


def test_bytecode_has_no_push0() -> None:
    # Creation code = init code | runtime (code, then data sections) | CBOR metadata | u16
    # size of the metadata including those two bytes.
    # The metadata names the runtime size and the data section sizes, so code and data can be
    # told apart; data bytes (jump tables, the metadata) are not instructions.
    creation = bytes.fromhex(load_artifact()["bytecode"][2:])
    meta_size = int.from_bytes(creation[-2:], "big")
    metadata, end = _cbor_item(creation, len(creation) - meta_size)
    assert end == len(creation) - 2
    _integrity, runtime_size, data_sizes, _immutables, compiler = metadata
    assert compiler == {b"vyper": [0, 4, 3]}
    runtime_start = len(creation) - meta_size - runtime_size
    init_code = creation[:runtime_start]
    runtime_code = creation[runtime_start : runtime_start + runtime_size - sum(data_sizes)]
    for code in (init_code, runtime_code):
        ops = _opcodes(code)
        assert 0x5F not in ops, "PUSH0 (Shanghai) would not run on london chains such as Theta"
        assert len(ops) > 50


# -- domain and deployment ----------------------------------------------------------------


def test_domain_separator_matches_eip712(chain: Chain, pool: TicketPool) -> None:
    signable = encode_typed_data(
        full_message=voucher_typed_data(
            new_address(), new_address(), 0, 1, chain_id=chain.chain_id, contract=pool.address
        )
    )
    assert pool.domain_separator() == signable.header
    assert pool.collateral_ratio_bps() == 10000 and pool.unlock_delay() == DELAY


def test_at_checks_the_code(chain: Chain, pool: TicketPool, operator: LocalAccount) -> None:
    assert TicketPool.at(chain, pool.address_bytes).address == pool.address
    with pytest.raises(ChainError, match="no contract at"):
        TicketPool.at(chain, operator.address)
    other = deploy_vyper(chain, operator, REVERTING_PAYEE, pool.address)
    with pytest.raises(ChainError, match="not a thetadist TicketPool"):
        TicketPool.at(chain, other)
    with pytest.raises(ChainError, match="not an address"):
        TicketPool.at(chain, "0x1234")


# -- funding --------------------------------------------------------------------------------


def test_fund_splits_value_and_enforces_the_ratio(chain: Chain, operator: LocalAccount) -> None:
    strict = TicketPool.deploy(chain, operator, collateral_ratio_bps=15000, unlock_delay=DELAY)
    payer = wallet(chain)
    strict.fund(payer, deposit=1000, collateral=1500)  # exactly 1.5×
    assert strict.pool(payer.address) == PoolState(1000, 1500, 0, 0, False)
    assert chain.balance(strict.address) == 2500
    with pytest.raises(ChainError, match="collateral below ratio"):
        strict.fund(payer, deposit=1, collateral=1)  # 1001 deposit needs 1501.5
    strict.fund(payer, deposit=2, collateral=3)
    assert strict.pool(payer.address).deposit == 1002
    assert "collateral exceeds value sent" in call_reverts(
        chain, strict, "fund", 10, sender=payer.address, value=9
    )
    # collateral alone is always fine, and a third party may top anyone up
    strict.fund_for(operator, payer.address, deposit=0, collateral=7)
    assert strict.pool(payer.address).collateral == 1510


def test_zero_ratio_needs_no_collateral(chain: Chain, operator: LocalAccount) -> None:
    bare = TicketPool.deploy(chain, operator, collateral_ratio_bps=0, unlock_delay=0)
    payer = payer_with_pool(bare, operator, deposit=500, collateral=0)
    payee = new_address()
    result = bare.redeem_batch(operator, [sign(bare, payer, payee, 800)])
    assert result.paid == [500] and bare.pool(payer.address).flagged
    assert bare.burned() == 0


def test_fund_for_rejects_the_zero_payer(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    zero = "0x" + "00" * 20
    assert "zero payer" in call_reverts(
        chain, pool, "fundFor", zero, 0, sender=operator.address, value=0
    )


# -- redemption -----------------------------------------------------------------------------


def test_cumulative_vouchers_pay_the_difference(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payer, payee = payer_with_pool(pool, operator), new_address()
    first = sign(pool, payer, payee, 300)
    result = pool.redeem_batch(operator, [first, first])  # the same voucher twice
    assert result.paid == [300, 0] and result.rejected == []
    assert pool.claimed(payer.address, payee, 0) == 300 and pool.earnings(payee) == 300
    result = pool.redeem_batch(
        operator, [sign(pool, payer, payee, 200), sign(pool, payer, payee, 1000), first]
    )
    assert result.paid == [0, 700, 0]  # lower and stale vouchers pay nothing, and are no error
    assert pool.earnings(payee) == 1000 and pool.pool(payer.address).deposit == DEPOSIT - 1000
    single = pool.redeem(operator, sign(pool, payer, payee, 1500))
    assert single.paid == [500] and pool.earnings(payee) == 1500
    assert pool.redeem(operator, sign(pool, payer, payee, 1500)).paid == [0]


def test_batch_with_interleaved_payees(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payers = [payer_with_pool(pool, operator) for _ in range(3)]
    a, b = new_address(), new_address()
    batch = [
        sign(pool, payers[0], a, 10),
        sign(pool, payers[1], a, 20),
        sign(pool, payers[2], b, 40),
        sign(pool, payers[0], b, 80),
        sign(pool, payers[1], a, 25),
    ]
    result = pool.redeem_batch(operator, batch)
    assert result.paid == [10, 20, 40, 80, 5] and result.total == 155
    assert pool.earnings(a) == 35 and pool.earnings(b) == 120
    assert receipt_events(chain, pool, result.tx_hash, "Redeemed")[4]["paid"] == 5


def test_anyone_may_redeem(chain: Chain, pool: TicketPool, operator: LocalAccount) -> None:
    payer, payee = payer_with_pool(pool, operator), wallet(chain)
    stranger = wallet(chain)
    pool.redeem_batch(stranger, [sign(pool, payer, payee.address, 42)])
    assert pool.earnings(payee.address) == 42 and pool.earnings(stranger.address) == 0


def test_empty_and_oversized_batches(pool: TicketPool, operator: LocalAccount) -> None:
    assert pool.redeem_batch(operator, []) == RedeemResult("", 0, [], [])
    voucher = ReferenceVoucher(bytes(20), bytes(20), 0, 1, bytes(65))
    with pytest.raises(ChainError, match=f"at most {MAX_BATCH}"):
        pool.redeem_batch(operator, [voucher] * (MAX_BATCH + 1))
    with pytest.raises(ChainError, match="65 bytes"):
        pool.redeem_batch(operator, [with_signature(voucher, bytes(64))])


# -- attacks on signatures ----------------------------------------------------------------


def test_replay_on_another_chain_or_deployment_is_rejected(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payer, payee = payer_with_pool(pool, operator), new_address()
    twin = TicketPool.deploy(chain, operator, collateral_ratio_bps=10000, unlock_delay=DELAY)
    forged = [
        sign(pool, payer, payee, 100, chain_id=chain.chain_id + 1),
        sign(pool, payer, payee, 100, chain_id=1),
        sign(pool, payer, payee, 100, contract=twin.address),
    ]
    result = pool.redeem_batch(operator, forged)
    assert result.paid == [0, 0, 0] and result.rejected == [0, 1, 2]
    assert reasons(chain, pool, result) == [WRONG_SIGNER] * 3
    with pytest.raises(ChainError, match="signer is not the payer"):
        pool.redeem(operator, forged[2])
    assert pool.earnings(payee) == 0


def test_tampered_vouchers_are_rejected(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payer, other = payer_with_pool(pool, operator), payer_with_pool(pool, operator)
    payee, thief = new_address(), new_address()
    good = sign(pool, payer, payee, 100)
    tampered = [
        ReferenceVoucher(good.payer, good.payee, good.epoch, 10**9, good.signature),  # amount
        ReferenceVoucher(good.payer, bytes.fromhex(thief[2:]), 0, 100, good.signature),  # payee
        ReferenceVoucher(good.payer, good.payee, 1, 100, good.signature),  # epoch
        ReferenceVoucher(  # payer: charge someone else's pool
            bytes.fromhex(other.address[2:]), good.payee, 0, 100, good.signature
        ),
    ]
    result = pool.redeem_batch(operator, [*tampered, good])
    assert result.paid == [0, 0, 0, 0, 100] and result.rejected == [0, 1, 2, 3]
    assert reasons(chain, pool, result) == [WRONG_SIGNER] * 4
    assert pool.earnings(thief) == 0 and pool.pool(other.address).deposit == DEPOSIT


def test_high_s_twin_is_rejected_although_ecrecover_accepts_it(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payer, payee = payer_with_pool(pool, operator), new_address()
    good = sign(pool, payer, payee, 100)
    r, s, v = good.signature[:32], int.from_bytes(good.signature[32:64], "big"), good.signature[64]
    twin = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # 27 <-> 28
    signable = encode_typed_data(
        full_message=voucher_typed_data(
            payer.address, payee, 0, 100, chain_id=chain.chain_id, contract=pool.address
        )
    )
    digest = keccak(b"\x19" + signable.version + signable.header + signable.body)
    recovered = chain.w3.eth.call(
        TxParams(
            to="0x0000000000000000000000000000000000000001",
            data=digest + (55 - v).to_bytes(32, "big") + twin[:64],
        )
    )
    assert recovered[12:] == bytes.fromhex(payer.address[2:])  # the precompile takes it...
    result = pool.redeem_batch(operator, [with_signature(good, twin)])
    assert result.rejected == [0] and reasons(chain, pool, result) == [MALFORMED]  # ...we don't
    with pytest.raises(ChainError, match="malformed signature"):
        pool.redeem(operator, with_signature(good, twin))
    assert pool.redeem_batch(operator, [good]).paid == [100]


def test_malformed_signatures_are_rejected(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payer, payee = payer_with_pool(pool, operator), new_address()
    good = sign(pool, payer, payee, 100)
    r, s, v = good.signature[:32], good.signature[32:64], good.signature[64]
    zero = bytes(32)
    n_bytes = SECP256K1_N.to_bytes(32, "big")
    malformed = [
        r + s + bytes([v - 27]),  # v in {0, 1}: the raw recovery id
        r + s + bytes([v + 2]),  # v = 29 or 30
        zero + s + bytes([v]),
        r + zero + bytes([v]),
    ]
    bad_signer = [
        n_bytes + s + bytes([v]),  # r out of range: ecrecover yields no address
        bytes(range(1, 65)) + bytes([27]),  # garbage
    ]
    batch = [with_signature(good, sig) for sig in malformed + bad_signer]
    result = pool.redeem_batch(operator, [*batch, good])
    assert result.paid == [0] * 6 + [100]
    assert reasons(chain, pool, result) == [MALFORMED] * 4 + [WRONG_SIGNER] * 2
    assert result.reasons == {
        **dict.fromkeys(range(4), "malformed signature"),
        **dict.fromkeys(range(4, 6), "signer is not the payer"),
    }
    for signature in malformed:
        with pytest.raises(ChainError, match="malformed signature"):
            pool.redeem(operator, with_signature(good, signature))
    # the client refuses a 64-byte signature; the contract does too when sent one directly
    args = (payer.address, payee, 0, 200)
    for signature in (good.signature[:64], good.signature[:1], b""):
        assert "malformed signature" in call_reverts(
            chain, pool, "redeem", *args, signature, sender=operator.address
        )


def test_zero_recovered_address_never_matches_the_zero_payer(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    # Anything that makes ecrecover fail returns address 0; a voucher "from" address 0 must
    # still be refused, whatever sits in that pool.
    zero = "0x" + "00" * 20
    payee = new_address()
    signature = SECP256K1_N.to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x1b"
    junk = ReferenceVoucher(bytes(20), bytes.fromhex(payee[2:]), 0, 1, signature)
    result = pool.redeem_batch(operator, [junk])
    assert result.rejected == [0] and reasons(chain, pool, result) == [WRONG_SIGNER]
    assert "signer is not the payer" in call_reverts(
        chain,
        pool,
        "redeem",
        zero,
        payee,
        0,
        1,
        junk.signature,
        sender=operator.address,
    )


# -- overdraft ------------------------------------------------------------------------------


def test_overdraft_burns_collateral_and_flags_the_payer(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payer = payer_with_pool(pool, operator, deposit=1000, collateral=1000)
    honest = payer_with_pool(pool, operator)
    payees = [new_address() for _ in range(3)]
    burned_before = pool.burned()
    balance_before = chain.balance(pool.address)
    result = pool.redeem_batch(
        operator,
        [
            sign(pool, payer, payees[0], 400),
            sign(pool, payer, payees[1], 400),
            sign(pool, payer, payees[2], 400),  # only 200 left
            sign(pool, honest, payees[2], 50),
            sign(pool, payer, payees[0], 900),  # flagged now: nothing more, no revert
        ],
    )
    assert result.paid == [400, 400, 200, 50, 0] and result.rejected == [4]
    assert reasons(chain, pool, result) == [FLAGGED]
    (overdraft,) = receipt_events(chain, pool, result.tx_hash, "Overdraft")
    assert overdraft["shortfall"] == 200 and overdraft["burned"] == 1000
    assert pool.pool(payer.address) == PoolState(0, 0, 0, 0, True)
    assert pool.burned() - burned_before == 1000
    assert [pool.earnings(p) for p in payees] == [400, 400, 250]
    assert chain.balance(pool.address) == balance_before  # burned coins stay, locked
    with pytest.raises(ChainError, match="payer flagged"):
        pool.redeem(operator, sign(pool, payer, payees[1], 500))
    with pytest.raises(ChainError, match="payer flagged"):
        pool.fund_for(operator, payer.address, deposit=10, collateral=10)
    chain.faucet(payer.address, 10**18)
    with pytest.raises(ChainError, match="payer flagged"):
        pool.fund(payer, deposit=10, collateral=10)
    with pytest.raises(ChainError, match="payer flagged"):
        pool.request_unlock(payer)


def test_a_huge_voucher_is_an_overdraft(pool: TicketPool, operator: LocalAccount) -> None:
    payer, payee = payer_with_pool(pool, operator), new_address()
    result = pool.redeem(operator, sign(pool, payer, payee, 2**256 - 1))  # not a revert
    assert result.paid == [DEPOSIT] and pool.pool(payer.address).flagged
    assert pool.claimed(payer.address, payee, 0) == 2**192 - 1


# -- unlock and withdraw --------------------------------------------------------------------


def test_unlock_window_then_withdraw_bumps_the_epoch(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payer, payee = wallet(chain), new_address()
    pool.fund(payer, deposit=1000, collateral=2000)
    old = sign(pool, payer, payee, 300)
    with pytest.raises(ChainError, match="no unlock requested"):
        pool.withdraw(payer)
    pool.request_unlock(payer)
    state = pool.pool(payer.address)
    assert state.unlocking and state.unlock_at >= chain.now() + DELAY - 1
    with pytest.raises(ChainError, match="unlock already requested"):
        pool.request_unlock(payer)
    with pytest.raises(ChainError, match="unlock delay not over"):
        pool.withdraw(payer)
    assert pool.redeem_batch(operator, [old]).paid == [300]  # payees still redeem meanwhile
    chain.advance_time(DELAY)
    held = chain.balance(pool.address)
    pool.withdraw(payer)
    assert held - chain.balance(pool.address) == 700 + 2000
    assert pool.pool(payer.address) == PoolState(0, 0, 1, 0, False)
    # epoch 1: the old voucher and any other epoch-0 one are dead
    pool.fund(payer, deposit=1000, collateral=1000)
    newer = sign(pool, payer, payee, 400)
    result = pool.redeem_batch(operator, [newer, sign(pool, payer, payee, 100, epoch=1)])
    assert result.paid == [0, 100] and reasons(chain, pool, result) == [WRONG_EPOCH]
    with pytest.raises(ChainError, match="wrong epoch"):
        pool.redeem(operator, newer)
    # the claim slot moved to epoch 1 (epoch 0's history lives in the events)
    assert pool.claimed(payer.address, payee, 1) == 100
    assert pool.claimed(payer.address, payee, 0) == 0


def test_only_the_payers_own_top_up_cancels_an_unlock(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payer = wallet(chain)
    pool.fund(payer, deposit=100, collateral=100)
    pool.request_unlock(payer)
    unlock_at = pool.pool(payer.address).unlock_at
    pool.fund_for(operator, payer.address, deposit=50, collateral=50)  # a stranger's gift
    assert pool.pool(payer.address).unlock_at == unlock_at
    pool.fund(payer, deposit=0, collateral=0)  # the payer's own (even empty) top-up
    assert not pool.pool(payer.address).unlocking
    pool.request_unlock(payer)
    chain.advance_time(DELAY)
    held = chain.balance(pool.address)
    pool.withdraw(payer)
    assert held - chain.balance(pool.address) == 300


# -- earnings -------------------------------------------------------------------------------


def test_withdraw_earnings_pays_exactly(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payer, payee = payer_with_pool(pool, operator), wallet(chain)
    pool.redeem_batch(operator, [sign(pool, payer, payee.address, 12345)])
    before = chain.balance(payee.address)
    result = pool.withdraw_earnings(payee)
    receipt = chain.w3.eth.get_transaction_receipt(result.tx_hash)
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert chain.balance(payee.address) == before + 12345 - fee
    assert pool.earnings(payee.address) == 0
    with pytest.raises(ChainError, match="no earnings"):
        pool.withdraw_earnings(payee)


REENTRANT = """
#pragma version 0.4.3
interface TicketPool:
    def withdrawEarnings(): nonpayable
    def fund(collateral: uint256): payable
    def requestUnlock(): nonpayable
    def withdraw(): nonpayable

pool: address
attempts: public(uint256)
successes: public(uint256)
received: public(uint256)

@deploy
def __init__(pool: address):
    self.pool = pool

@external
def pull():
    extcall TicketPool(self.pool).withdrawEarnings()

@payable
@external
def fundOwn(collateral: uint256):
    extcall TicketPool(self.pool).fund(collateral, value=msg.value)

@external
def unlock():
    extcall TicketPool(self.pool).requestUnlock()

@external
def pullPool():
    extcall TicketPool(self.pool).withdraw()

@payable
@external
def __default__():
    self.received += msg.value
    if self.attempts != 0:
        return
    self.attempts += 1
    # try both ways back in while the pool is paying us; swallow the failure
    if raw_call(self.pool, method_id("withdrawEarnings()"), revert_on_failure=False):
        self.successes += 1
    if raw_call(self.pool, method_id("withdraw()"), revert_on_failure=False):
        self.successes += 1
"""

REVERTING_PAYEE = """
#pragma version 0.4.3
interface TicketPool:
    def withdrawEarnings(): nonpayable

pool: address

@deploy
def __init__(pool: address):
    self.pool = pool

@external
def pull():
    extcall TicketPool(self.pool).withdrawEarnings()

@payable
@external
def __default__():
    raise "not accepting coins"
"""


def test_reentrant_payee_gets_nothing_extra(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    attacker = deploy_vyper(chain, operator, REENTRANT, pool.address)
    payer = payer_with_pool(pool, operator)
    pool.redeem_batch(operator, [sign(pool, payer, attacker, 777)])
    held = chain.balance(pool.address)
    send(chain, operator, attacker, "pull()")
    assert view(chain, attacker, "received()") == 777 == held - chain.balance(pool.address)
    assert view(chain, attacker, "attempts()") == 1 and view(chain, attacker, "successes()") == 0
    assert pool.earnings(attacker) == 0


def test_reentrant_payer_withdraws_once(chain: Chain, operator: LocalAccount) -> None:
    pool = TicketPool.deploy(chain, operator, collateral_ratio_bps=10000, unlock_delay=10)
    attacker = deploy_vyper(chain, operator, REENTRANT, pool.address)
    pool.fund_for(operator, attacker, deposit=500, collateral=500)  # someone else's coins too
    send(chain, operator, attacker, "fundOwn(uint256)", 0)  # its own (empty) top-up
    send(chain, operator, attacker, "unlock()")
    chain.advance_time(10)
    send(chain, operator, attacker, "pullPool()")
    assert view(chain, attacker, "received()") == 1000 and chain.balance(pool.address) == 0
    assert view(chain, attacker, "successes()") == 0
    assert pool.pool(attacker).epoch == 1


def test_reverting_payee_only_hurts_itself(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    stubborn = deploy_vyper(chain, operator, REVERTING_PAYEE, pool.address)
    payer, fine = payer_with_pool(pool, operator), wallet(chain)
    result = pool.redeem_batch(
        operator, [sign(pool, payer, stubborn, 60), sign(pool, payer, fine.address, 40)]
    )
    assert result.paid == [60, 40]
    with pytest.raises(ChainError, match="not accepting coins"):
        send(chain, operator, stubborn, "pull()")
    assert pool.earnings(stubborn) == 60  # kept for when it learns to accept coins
    pool.withdraw_earnings(fine)
    assert pool.earnings(fine.address) == 0


# -- properties -----------------------------------------------------------------------------


# a few seconds by default; THETADIST_CONTRACT_EXAMPLES=500 for a deep run
@settings(
    max_examples=int(os.environ.get("THETADIST_CONTRACT_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    deposit=st.integers(0, 2_000),
    vouchers=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1_000)), min_size=1, max_size=8),
    split=st.integers(1, 8),
)
def test_any_voucher_sequence_pays_the_max_cumulative_bounded_by_the_deposit(
    pool: TicketPool,
    operator: LocalAccount,
    deposit: int,
    vouchers: list[tuple[int, int]],
    split: int,
) -> None:
    payer = payer_with_pool(pool, operator, deposit=deposit, collateral=deposit)
    payees = [new_address() for _ in range(3)]
    signed = [sign(pool, payer, payees[who], amount) for who, amount in vouchers]
    paid: list[int] = []
    for start in range(0, len(signed), split):
        paid += pool.redeem_batch(operator, signed[start : start + split]).paid
    best: dict[int, int] = {}
    for who, amount in vouchers:
        best[who] = max(best.get(who, 0), amount)
    owed = sum(best.values())
    assert sum(paid) == min(owed, deposit)
    state = pool.pool(payer.address)
    assert state.flagged == (owed > deposit)
    assert state.deposit == (0 if owed > deposit else deposit - owed)
    for who, payee in enumerate(payees):
        assert pool.earnings(payee) <= best.get(who, 0)
        if owed <= deposit:
            assert pool.earnings(payee) == best.get(who, 0)
            assert pool.claimed(payer.address, payee, 0) == best.get(who, 0)


# -- the payee's side of redemption ---------------------------------------------------------


def test_a_ledger_head_with_the_other_v_is_redeemed_with_the_right_one(
    pool: TicketPool, operator: LocalAccount, tmp_path
) -> None:
    """A payee checks most vouchers against the payer's known key, which ignores v; should
    such a voucher become the head, redemption restores the v the contract recovers with."""
    from thetadist.pay.ledger import Role, VoucherLedger
    from thetadist.pay.redeem import redeem_vouchers
    from thetadist.pay.roles import domain_of
    from thetadist.pay.voucher import SignedVoucher, Voucher, VoucherSigner

    payer, payee = payer_with_pool(pool, operator), Account.create()
    domain = domain_of(pool)
    signer = VoucherSigner(bytes(payer.key), domain)
    signed = signer.sign(Voucher(signer.address, bytes.fromhex(payee.address[2:]), 0, 1234))
    other_v = SignedVoucher(
        signed.voucher, signed.signature[:64] + bytes((55 - signed.signature[64],))
    )
    with VoucherLedger(tmp_path / "vouchers.sqlite") as ledger:
        ledger.record(Role.RECEIVED, domain, other_v)
        report = redeem_vouchers(pool, ledger, operator, payee=other_v.payee)
    assert report.paid_wei == 1234 and report.rejected == 0
    assert pool.earnings(payee.address) == 1234
