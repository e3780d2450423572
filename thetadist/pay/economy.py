"""A whole paid swarm's money on one chain: the TicketPool, and a party per swarm node.

Used by ``thetadist demo`` (on the in-process EVM) and by the end-to-end tests (on anvil):
deploy the contract, give every party a funded wallet (and a pool when it pays), build each
node's :class:`~thetadist.net.payments.Payments`, and afterwards redeem every payee's
vouchers and read what the chain credited.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from thetadist.net.payments import Payments
from thetadist.pay.accounts import DEFAULT_CREDIT_WINDOW
from thetadist.pay.chain import Chain, TicketPool
from thetadist.pay.ledger import Role, VoucherLedger
from thetadist.pay.redeem import RedeemReport, redeem_vouchers
from thetadist.pay.roles import charging, domain_of, paying

#: Gas money for every party (the chain's own currency, not a deposit).
GAS_MONEY = 10**18


@dataclass
class Party:
    """One swarm node's wallet and ledger, and what it charges or may pay."""

    name: str
    account: LocalAccount
    ledger: VoucherLedger
    price_per_mib: int = 0
    max_price_per_mib: int | None = None
    credit_window: int = DEFAULT_CREDIT_WINDOW

    @property
    def address(self) -> bytes:
        return bytes.fromhex(self.account.address[2:])


@dataclass
class Settlement:
    """What a party promised (vouchers it signed) and earned (credited on-chain)."""

    name: str
    address: str
    paid_wei: int
    pieces_paid: int
    redeemed: RedeemReport
    earnings_wei: int


@dataclass
class Economy:
    chain: Chain
    pool: TicketPool
    ledgers_dir: Path
    parties: list[Party] = field(default_factory=list)
    _resources: ExitStack = field(default_factory=ExitStack)

    @classmethod
    def deploy(
        cls,
        chain: Chain,
        ledgers_dir: Path,
        *,
        collateral_ratio_bps: int = 10_000,
        unlock_delay: int = 3600,
    ) -> Economy:
        deployer: LocalAccount = Account.create()
        chain.faucet(deployer.address, GAS_MONEY)
        pool = TicketPool.deploy(
            chain, deployer, collateral_ratio_bps=collateral_ratio_bps, unlock_delay=unlock_delay
        )
        ledgers_dir.mkdir(parents=True, exist_ok=True)
        return cls(chain, pool, ledgers_dir)

    def close(self) -> None:
        self._resources.close()

    def __enter__(self) -> Economy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def party(
        self,
        name: str,
        *,
        price_per_mib: int = 0,
        deposit: int = 0,
        collateral: int | None = None,
        max_price_per_mib: int | None = None,
        credit_window: int = DEFAULT_CREDIT_WINDOW,
    ) -> Party:
        """A new wallet with gas money; with ``deposit``, also a funded pool (collateral
        defaults to the deposit times the contract's ratio)."""
        account: LocalAccount = Account.create()
        if collateral is None:
            collateral = -(-deposit * self.pool.collateral_ratio_bps() // 10_000)
        self.chain.faucet(account.address, GAS_MONEY + deposit + collateral)
        if deposit:
            self.pool.fund(account, deposit=deposit, collateral=collateral)
        ledger = VoucherLedger(self.ledgers_dir / f"{name}.sqlite")
        self._resources.callback(ledger.close)
        party = Party(name, account, ledger, price_per_mib, max_price_per_mib, credit_window)
        self.parties.append(party)
        return party

    def payments(self, party: Party) -> Payments:
        payee = (
            charging(
                self.pool,
                party.ledger,
                party.address,
                party.price_per_mib,
                credit_window=party.credit_window,
            )
            if party.price_per_mib
            else None
        )
        payer = (
            paying(self.pool, party.ledger, party.account, party.max_price_per_mib)
            if party.max_price_per_mib is not None
            else None
        )
        return Payments(payee=payee, payer=payer)

    def settle(self, *, batch: int = 32) -> list[Settlement]:
        """Every charging party redeems its vouchers; returns each party's figures."""
        domain = domain_of(self.pool)
        settlements = []
        for party in self.parties:
            report = (
                redeem_vouchers(self.pool, party.ledger, party.account, batch=batch)
                if party.price_per_mib
                else RedeemReport()
            )
            signed = party.ledger.entries(role=Role.SIGNED, domain=domain, limit=None)
            settlements.append(
                Settlement(
                    party.name,
                    party.account.address,
                    sum(entry.amount for entry in signed),
                    len(signed),
                    report,
                    self.pool.earnings(party.account.address),
                )
            )
        return settlements
