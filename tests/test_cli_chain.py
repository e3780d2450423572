"""``thetadist contract|pool|earnings`` against a real anvil: JSON summaries, units, config
resolution, and one-line errors with their exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from anvil import anvil  # noqa: F401  (the fixture)
from eth_account import Account
from eth_account.signers.local import LocalAccount

from bench.pay_gas import sign_voucher
from thetadist.cli import main
from thetadist.errors import UsageError
from thetadist.pay.chain import Chain, TicketPool
from thetadist.pay.config import ChainConfig, parse_address

PASSPHRASE = "correct horse"
ETHER = 10**18


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def summary(out: str) -> dict[str, Any]:
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert records[-1]["event"] == "summary", records
    result: dict[str, Any] = records[-1]
    return result


def error_line(code: int, err: str, expected_code: int, text: str) -> None:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], err


def make_wallet(path: Path, chain: Chain, coins: int = 100 * ETHER) -> LocalAccount:
    """A V3 keystore (cheap scrypt) holding a fresh key with coins on the chain."""
    account: LocalAccount = Account.create()
    keystore = Account.encrypt(account.key, PASSPHRASE, kdf="scrypt", iterations=2**4)
    path.write_text(json.dumps(keystore))
    chain.faucet(account.address, coins)
    return account


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run in an empty directory with the wallet passphrase and no chain settings inherited."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THETADIST_PASSPHRASE", PASSPHRASE)
    for name in ("THETADIST_RPC", "THETADIST_CONTRACT", "THETADIST_WALLET"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_deploy_fund_status_unlock_withdraw(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    anvil: str,  # noqa: F811
) -> None:
    chain = Chain.connect(anvil)
    payer_file = env / "payer.json"
    payer = make_wallet(payer_file, chain)
    wallet = ("--wallet", str(payer_file))

    code, out, err = run(
        capsys, "contract", "deploy", "--rpc", anvil, *wallet,
        "--ratio", "15000", "--unlock-delay", "600", "--save", "chain.toml", "--json",
    )  # fmt: skip
    assert code == 0, err
    deployed = summary(out)
    assert deployed["chain_id"] == 31337 and deployed["collateral_ratio_bps"] == 15000
    assert (env / "chain.toml").read_text().count(deployed["contract"]) == 1
    config = ("--config", "chain.toml")

    code, out, err = run(capsys, "contract", "show", *config, "--json")
    assert code == 0 and summary(out)["unlock_delay"] == 600 and summary(out)["burned_wei"] == 0

    code, out, err = run(
        capsys, "pool", "fund", "--deposit", "1.5ether", "--collateral", "2250finney",
        *config, *wallet, "--json",
    )  # fmt: skip
    assert code == 0, err
    funded = summary(out)
    assert funded["deposit_wei"] == 3 * ETHER // 2 and funded["collateral_wei"] == 9 * ETHER // 4
    assert funded["gas_used"] > 21000 and funded["tx_hash"].startswith("0x")

    code, out, err = run(
        capsys, "pool", "fund", "--deposit", "1ether", "--collateral", "1ether", *config, *wallet
    )
    error_line(code, err, 9, "collateral below ratio")

    code, out, _ = run(capsys, "pool", "status", *config, *wallet, "--json")
    assert summary(out)["payer"] == payer.address and summary(out)["unlocking"] is False
    code, out, _ = run(capsys, "pool", "status", payer.address.lower(), *config, "--json")
    assert summary(out)["deposit_wei"] == 3 * ETHER // 2

    code, out, err = run(capsys, "pool", "unlock", *config, *wallet, "--json")
    assert code == 0 and summary(out)["unlock_at"] > 0, err
    code, out, _ = run(capsys, "pool", "status", *config, *wallet)  # for people
    assert "1.5 ether" in out and "2.25 ether" in out
    code, out, err = run(capsys, "pool", "withdraw", *config, *wallet, "--json")
    error_line(code, err, 9, "unlock delay not over")
    assert json.loads(out.splitlines()[-1])["event"] == "error"

    chain.advance_time(600)
    code, out, err = run(capsys, "pool", "withdraw", *config, *wallet, "--json")
    assert code == 0, err
    assert summary(out)["withdrawn_wei"] == 3 * ETHER // 2 + 9 * ETHER // 4
    assert summary(out)["new_epoch"] == 1


def test_earnings(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: Path,
    anvil: str,  # noqa: F811
) -> None:
    chain = Chain.connect(anvil)
    operator = Account.create()
    chain.faucet(operator.address, 10 * ETHER)
    pool = TicketPool.deploy(chain, operator)
    payee_file = env / "payee.json"
    payee = make_wallet(payee_file, chain)
    payer = Account.create()
    pool.fund_for(operator, payer.address, deposit=ETHER, collateral=ETHER)
    voucher = sign_voucher(
        payer, payee.address, 0, 25 * 10**15, chain_id=chain.chain_id, contract=pool.address
    )
    pool.redeem_batch(operator, [voucher])

    monkeypatch.setenv("THETADIST_RPC", anvil)  # the chain from the environment this time
    monkeypatch.setenv("THETADIST_CONTRACT", pool.address)
    wallet = ("--wallet", str(payee_file))
    code, out, err = run(capsys, "earnings", *wallet, "--json")  # `show` is the default
    assert code == 0 and summary(out)["earnings_wei"] == 25 * 10**15, err
    code, out, _ = run(capsys, "earnings", payee.address, "--json")
    assert summary(out) == {"event": "summary", "payee": payee.address, "earnings_wei": 25 * 10**15}
    code, out, _ = run(capsys, "earnings", payee.address)
    assert "0.025 ether" in out
    before = chain.balance(payee.address)
    code, out, err = run(capsys, "earnings", "withdraw", *wallet, "--json")
    assert code == 0 and summary(out)["withdrawn_wei"] == 25 * 10**15, err
    assert chain.balance(payee.address) > before
    code, _, err = run(capsys, "earnings", "withdraw", *wallet)
    error_line(code, err, 2, "no earnings to withdraw")


def test_config_file_and_usage_errors(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    anvil: str,  # noqa: F811
) -> None:
    code, _, err = run(capsys, "pool", "status", "0x" + "11" * 20)
    error_line(code, err, 2, "no chain RPC: pass --rpc URL")
    code, _, err = run(capsys, "pool", "status", "0x" + "11" * 20, "--rpc", anvil)
    error_line(code, err, 2, "no TicketPool address")
    (env / "thetadist-chain.toml").write_text(f'[chain]\nrpc = "{anvil}"\n')
    code, _, err = run(capsys, "earnings", "0x" + "11" * 20, "--contract", "0x" + "22" * 20)
    error_line(code, err, 9, "no contract at")  # the default config supplied the RPC
    code, _, err = run(capsys, "earnings", "0x" + "11" * 20, "--contract", "0xAbC")
    error_line(code, err, 2, "not a 0x-prefixed 20-byte hex address")
    mixed = "0x" + "aB" * 20
    code, _, err = run(capsys, "earnings", mixed, "--contract", "0x" + "22" * 20)
    error_line(code, err, 2, "wrong checksum")
    code, _, err = run(capsys, "pool", "fund", "--deposit", "1.5 lightyears")
    error_line(code, err, 2, "--deposit: not an amount")
    code, _, err = run(capsys, "pool", "status", "0x" + "11" * 20, "--config", "missing.toml")
    error_line(code, err, 2, "does not exist")
    (env / "bad.toml").write_text("[chain\n")
    code, _, err = run(capsys, "pool", "status", "0x" + "11" * 20, "--config", "bad.toml")
    error_line(code, err, 2, "not valid TOML")
    code, out, err = run(
        capsys, "contract", "show", "--rpc", "http://127.0.0.1:9", "--contract", "0x" + "22" * 20,
        "--json",
    )  # fmt: skip
    error_line(code, err, 9, "connection refused")
    assert json.loads(out.splitlines()[-1])["exit_code"] == 9


# -- configuration resolution (no chain needed) ------------------------------------------

ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # an EIP-55 test vector


def test_config_precedence_flag_environment_file(tmp_path: Path) -> None:
    (tmp_path / "thetadist-chain.toml").write_text(
        f'[chain]\nrpc = "http://file:1"\ncontract = "{ADDRESS.lower()}"\n'
    )
    from_file = ChainConfig.resolve(environ={}, cwd=tmp_path)
    assert from_file == ChainConfig("http://file:1", ADDRESS)  # checksummed on the way in
    environ = {"THETADIST_RPC": "http://env:2"}
    assert ChainConfig.resolve(environ=environ, cwd=tmp_path).rpc == "http://env:2"
    flagged = ChainConfig.resolve(rpc="https://flag:3", environ=environ, cwd=tmp_path)
    assert flagged.rpc == "https://flag:3" and flagged.contract == ADDRESS
    empty = ChainConfig.resolve(environ={}, cwd=tmp_path / "nowhere")
    with pytest.raises(UsageError, match="no chain RPC"):
        empty.require_rpc()
    with pytest.raises(UsageError, match="contract deploy --save"):
        empty.require_contract()
    with pytest.raises(UsageError, match="does not exist"):
        ChainConfig.resolve(config=tmp_path / "absent.toml", environ={})


def test_config_save_round_trips(tmp_path: Path) -> None:
    config = ChainConfig('https://node.example/rpc?key=a"b\\c', ADDRESS)
    path = tmp_path / "saved.toml"
    config.save(path)
    assert ChainConfig.load(path) == config
    ChainConfig(rpc="http://only:1").save(path)  # replaces, never merges
    assert ChainConfig.load(path) == ChainConfig("http://only:1", None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[chain]\nrpc = 5\n", "chain.rpc must be a string"),
        ('chain = "x"\n', "[chain] must be a table"),
        ('[chain]\nrpc = "ftp://x"\n', "not an HTTP(S) JSON-RPC URL"),
        ('[chain]\ncontract = "0x1234"\n', "not a 0x-prefixed 20-byte hex address"),
        (f'[chain]\ncontract = "{ADDRESS[:-1]}e"\n', "wrong checksum"),
        ("[chain", "not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(problem)):
        ChainConfig.load(path)


def test_addresses() -> None:
    assert parse_address(ADDRESS.lower()) == ADDRESS == parse_address(f"  {ADDRESS} ")
    with pytest.raises(UsageError, match="wrong checksum"):
        parse_address(ADDRESS.upper().replace("0X", "0x"))
