"""The chain client against a real node (anvil): the whole payer/payee cycle and its failures."""

from __future__ import annotations

import socket
import threading

import pytest
from anvil import anvil  # noqa: F401  (the fixture)
from eth_account import Account
from eth_account.signers.local import LocalAccount

from bench.pay_gas import ReferenceVoucher, running_anvil, sign_voucher
from thetadist.errors import ChainError
from thetadist.pay.chain import Chain, PoolState, TicketPool

ETHER = 10**18
DELAY = 3600


@pytest.fixture(scope="module")
def chain(anvil: str) -> Chain:  # noqa: F811
    return Chain.connect(anvil)


@pytest.fixture(scope="module")
def operator(chain: Chain) -> LocalAccount:
    account: LocalAccount = Account.create()
    chain.faucet(account.address, 1000 * ETHER)
    return account


@pytest.fixture(scope="module")
def pool(chain: Chain, operator: LocalAccount) -> TicketPool:
    return TicketPool.deploy(chain, operator, collateral_ratio_bps=10000, unlock_delay=DELAY)


def funded(chain: Chain, coins: int = 10 * ETHER) -> LocalAccount:
    account: LocalAccount = Account.create()
    chain.faucet(account.address, coins)
    return account


def sign(pool: TicketPool, payer: LocalAccount, payee: str, cumulative: int) -> ReferenceVoucher:
    return sign_voucher(
        payer,
        payee,
        pool.pool(payer.address).epoch,
        cumulative,
        chain_id=pool.chain.chain_id,
        contract=pool.address,
    )


def fee_of(chain: Chain, tx_hash: str) -> int:
    receipt = chain.w3.eth.get_transaction_receipt(tx_hash)
    return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])


def test_payer_and_payee_cycle(chain: Chain, pool: TicketPool, operator: LocalAccount) -> None:
    assert chain.chain_id == 31337 and TicketPool.at(chain, pool.address).address == pool.address
    payer, payee = funded(chain), funded(chain)
    start = chain.balance(payer.address)
    funding = pool.fund(payer, deposit=ETHER, collateral=ETHER)
    assert funding.gas_used > 21000 and funding.tx_hash.startswith("0x")
    assert pool.pool(payer.address) == PoolState(ETHER, ETHER, 0, 0, False)
    assert chain.balance(payer.address) == start - 2 * ETHER - fee_of(chain, funding.tx_hash)

    small, large = (
        sign(pool, payer, payee.address, 10**15),
        sign(pool, payer, payee.address, 3 * 10**15),
    )
    forged = ReferenceVoucher(small.payer, small.payee, 0, 10**17, small.signature)
    result = pool.redeem_batch(operator, [small, forged, large, small])
    assert result.paid == [10**15, 0, 2 * 10**15, 0] and result.rejected == [1]
    assert result.total == pool.earnings(payee.address) == 3 * 10**15
    assert pool.claimed(payer.address, payee.address, 0) == 3 * 10**15

    before = chain.balance(payee.address)
    withdrawal = pool.withdraw_earnings(payee)
    assert chain.balance(payee.address) == before + 3 * 10**15 - fee_of(chain, withdrawal.tx_hash)
    assert pool.earnings(payee.address) == 0

    pool.request_unlock(payer)
    state = pool.pool(payer.address)
    assert state.unlocking and state.unlock_at - chain.now() <= DELAY
    with pytest.raises(ChainError, match="unlock delay not over"):
        pool.withdraw(payer)
    chain.advance_time(DELAY)
    before = chain.balance(payer.address)
    withdrawn = pool.withdraw(payer)
    refund = 2 * ETHER - 3 * 10**15
    assert chain.balance(payer.address) == before + refund - fee_of(chain, withdrawn.tx_hash)
    assert pool.pool(payer.address) == PoolState(0, 0, 1, 0, False)
    assert pool.redeem_batch(operator, [large]).rejected == [0]  # epoch 0 is over


def test_errors_are_one_line_chain_errors(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    broke: LocalAccount = Account.create()
    with pytest.raises(ChainError) as failure:
        pool.fund(broke, deposit=ETHER, collateral=ETHER)
    assert "\n" not in str(failure.value) and "fund the pool" in str(failure.value)
    with pytest.raises(ChainError) as failure:
        pool.fund(operator, deposit=2 * ETHER, collateral=ETHER)
    assert str(failure.value).endswith("execution reverted: collateral below ratio")
    with pytest.raises(ChainError, match="no earnings"):
        pool.withdraw_earnings(operator)
    with pytest.raises(ChainError, match="not an address"):
        pool.pool("0xnot-an-address")
    with pytest.raises(ChainError, match="no contract at"):
        TicketPool.at(chain, operator.address)


def test_unreachable_and_silent_nodes() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ChainError, match="connection refused or host unreachable"):
        Chain.connect(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(ChainError, match="not an HTTP JSON-RPC URL"):
        Chain.connect("ws://127.0.0.1:8545")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ChainError, match="did not answer in time"):
            Chain.connect(url, timeout=0.5)


def test_receipt_timeout_when_nothing_is_mined() -> None:
    with running_anvil("--no-mining") as url:
        chain = Chain.connect(url, receipt_timeout=1.0)
        deployer = funded(chain)
        with pytest.raises(
            ChainError, match=r"no receipt for transaction 0x[0-9a-f]{64} within 1 s"
        ):
            TicketPool.deploy(chain, deployer)


def test_legacy_fees_on_a_pre_london_chain() -> None:
    # Berlin has no base fee: transactions carry a gas price, and the london bytecode (no
    # PUSH0, no BASEFEE) runs as it is.
    with running_anvil("--hardfork", "berlin") as url:
        chain = Chain.connect(url)
        assert chain.w3.eth.get_block("latest").get("baseFeePerGas") is None
        deployer, payee = funded(chain), Account.create().address
        pool = TicketPool.deploy(chain, deployer, unlock_delay=10)
        payer = funded(chain)
        pool.fund(payer, deposit=1000, collateral=1000)
        assert pool.redeem_batch(deployer, [sign(pool, payer, payee, 600)]).paid == [600]
        funding = pool.fund(payer, deposit=1, collateral=1)
        receipt = chain.w3.eth.get_transaction_receipt(funding.tx_hash)
        assert receipt["type"] == 0 and "maxFeePerGas" not in chain.w3.eth.get_transaction(
            funding.tx_hash
        )


def test_a_fork_to_another_chain_id_changes_the_domain() -> None:
    # After a fork the chain id differs: vouchers signed for the old chain must die there,
    # and the contract must verify against the new id without a redeploy.
    with running_anvil() as url:
        chain = Chain.connect(url)
        operator, payer, payee = funded(chain), Account.create(), Account.create().address
        pool = TicketPool.deploy(chain, operator)
        pool.fund_for(operator, payer.address, deposit=1000, collateral=1000)
        old_domain = pool.domain_separator()
        before_fork = sign(pool, payer, payee, 100)
        chain.call(
            "change the chain id",
            lambda: chain.w3.provider.make_request("anvil_setChainId", [777]),
        )
        forked = Chain.connect(url)
        assert forked.chain_id == 777
        pool = TicketPool.at(forked, pool.address)  # recomputes the expected domain
        assert pool.domain_separator() != old_domain
        after_fork = sign(pool, payer, payee, 300)
        result = pool.redeem_batch(operator, [before_fork, after_fork])
        assert result.paid == [0, 300] and result.rejected == [0]


def test_pool_reads_from_many_threads(
    chain: Chain, pool: TicketPool, operator: LocalAccount
) -> None:
    payers = [Account.create() for _ in range(4)]
    for index, payer in enumerate(payers):
        pool.fund_for(operator, payer.address, deposit=index + 1, collateral=index + 1)
    problems: list[Exception] = []

    def reader(index: int) -> None:
        try:
            for _ in range(20):
                assert pool.pool(payers[index].address).deposit == index + 1
        except Exception as problem:  # reported by the main thread
            problems.append(problem)

    threads = [threading.Thread(target=reader, args=(i % 4,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(5):  # transactions interleave with the reads
        pool.fund_for(operator, operator.address, deposit=1, collateral=1)
    for thread in threads:
        thread.join()
    assert problems == []


def test_pool_reads_ask_the_node_for_its_chain_id_once(
    anvil: str,  # noqa: F811
    operator: LocalAccount,
    pool: TicketPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """web3 validates each eth_call against the node's chain id; a seeder reads payers' pools
    all day, and the chain id of a live connection does not change: asked once, not per read."""
    import json

    import requests

    reader = TicketPool.at(Chain.connect(anvil), pool.address)
    methods: list[str] = []
    post = requests.Session.post

    def counting(self, url, *args, **kwargs):  # type: ignore[no-untyped-def]
        body = kwargs.get("data")
        if body:
            methods.append(json.loads(body)["method"])
        return post(self, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "post", counting)
    for _ in range(3):
        assert reader.pool(operator.address).deposit >= 0
    assert methods.count("eth_call") == 3
    assert methods.count("eth_chainId") <= 1
