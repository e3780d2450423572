"""The payment options of ``seed`` / ``fetch`` and ``tickets``: every misuse is one line and a
documented exit code, before anything touches the network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from thetadist.cli import main

UNREACHABLE_RPC = "http://127.0.0.1:9/"  # the discard port: nothing answers JSON-RPC there
SOME_CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


@pytest.fixture
def build(tmp_path: Path, small_tree: Path) -> tuple[Path, Path]:
    manifest = tmp_path / "b.tdm"
    code = run_quiet("manifest", "create", str(small_tree), "-o", str(manifest))
    assert code == 0
    return small_tree, manifest


def run_quiet(*argv: str) -> int:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--json"])
    return int(done.value.code or 0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--wallet", "w.json"], "--wallet needs --price"),
        (["--free", "--max-price", "1gwei"], "--free cannot go with"),
        (["--max-price", "lots"], "--max-price"),
        (["--price", "0"], "--price must be above zero"),
    ],
)
def test_fetch_payment_misuse_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    build: tuple[Path, Path],
    extra: list[str],
    message: str,
) -> None:
    _, manifest = build
    capsys.readouterr()
    code, _, err = run(
        capsys, "fetch", str(manifest), "-o", str(tmp_path / "out"), "--peer",
        "127.0.0.1:9", "--rpc", UNREACHABLE_RPC, "--contract", SOME_CONTRACT, *extra,
    )
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_seed_with_a_price_and_free_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], build: tuple[Path, Path]
) -> None:
    src, manifest = build
    capsys.readouterr()
    code, _, err = run(
        capsys, "seed", str(src), "--manifest", str(manifest), "--price", "1gwei", "--free"
    )
    assert code == 2 and "--free cannot go with" in err


def test_an_unreachable_chain_is_a_payment_error_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, build: tuple[Path, Path]
) -> None:
    src, manifest = build
    capsys.readouterr()
    code, out, err = run(
        capsys, "seed", str(src), "--manifest", str(manifest), "--price", "1gwei",
        "--wallet", str(tmp_path / "nowhere.json"), "--rpc", UNREACHABLE_RPC,
        "--contract", SOME_CONTRACT, "--json",
    )
    assert code == 9, err
    record: dict[str, Any] = json.loads(out.splitlines()[-1])
    assert record["event"] == "error" and record["error"] == "ChainError"
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_tickets_list_on_an_empty_ledger_and_a_bad_role(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ledger = str(tmp_path / "vouchers.sqlite")
    code, out, _ = run(capsys, "tickets", "list", "--ledger", ledger, "--json")
    assert code == 0
    assert json.loads(out.splitlines()[-1]) == {
        "event": "summary", "vouchers": 0, "amount_wei": 0
    }
    code, _, err = run(capsys, "tickets", "list", "--ledger", ledger, "--role", "bogus")
    assert code == 2 and "--role" in err
    not_a_ledger = tmp_path / "notes.txt"
    not_a_ledger.write_bytes(b"x" * 5000)
    code, _, err = run(capsys, "tickets", "list", "--ledger", str(not_a_ledger))
    assert code == 5 and "voucher ledger" in err
