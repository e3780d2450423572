"""Wallets (V3 keystores), amounts of wei, and the ``thetadist wallet`` command group."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from eth_account import Account
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import thetadist.pay.wallet as wallet_module
from thetadist.cli import wallet as wallet_cli
from thetadist.errors import StoreError, UsageError
from thetadist.pay.amounts import MAX_WEI, format_amount, parse_amount
from thetadist.pay.wallet import (
    PASSPHRASE_ENV,
    WALLET_ENV,
    create_wallet,
    default_wallet_path,
    import_wallet,
    open_wallet,
    read_passphrase,
    wallet_address,
)

PASSPHRASE = "correct horse battery staple"
KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KEY_ADDRESS = Account.from_key(bytes.fromhex(KEY_HEX)).address


@pytest.fixture(autouse=True)
def cheap_keystores(monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt at N = 2**10 instead of 2**18: the same code, a millisecond instead of a second."""
    monkeypatch.setattr(wallet_module, "DEFAULT_WORK_FACTOR", 1 << 10)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(WALLET_ENV, raising=False)


def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)


# -- wallets ---------------------------------------------------------------------------------


def test_create_open_show(tmp_path: Path) -> None:
    path = tmp_path / "config" / "thetadist" / "wallet.json"
    address = create_wallet(path, PASSPHRASE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wallet_address(path) == address and address.startswith("0x")
    assert open_wallet(path, passphrase=PASSPHRASE).address == address
    assert os.listdir(path.parent) == ["wallet.json"]  # no temporary file left behind
    # a standard keystore: eth-account reads it without us
    assert Account.from_key(Account.decrypt(path.read_text(), PASSPHRASE)).address == address


def test_never_overwrites_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    first = create_wallet(path, PASSPHRASE)
    with pytest.raises(UsageError, match="already exists"):
        create_wallet(path, PASSPHRASE)
    with pytest.raises(UsageError, match="already exists"):
        import_wallet(path, PASSPHRASE, private_key=KEY_HEX)
    assert wallet_address(path) == first
    assert import_wallet(path, PASSPHRASE, private_key=KEY_HEX, overwrite=True) == KEY_ADDRESS
    assert wallet_address(path) == KEY_ADDRESS


def test_passphrase_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wallet.json"
    address = create_wallet(path, PASSPHRASE)
    with pytest.raises(UsageError, match="wrong passphrase"):
        open_wallet(path, passphrase="nope")
    no_terminal(monkeypatch)
    with pytest.raises(UsageError, match=f"set {PASSPHRASE_ENV}"):
        open_wallet(path)
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    assert open_wallet(path).address == address
    monkeypatch.delenv(PASSPHRASE_ENV)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    prompts: list[str] = []
    monkeypatch.setattr(
        wallet_module.getpass, "getpass", lambda prompt: prompts.append(prompt) or PASSPHRASE
    )
    assert open_wallet(path).address == address
    assert prompts == [f"Passphrase for {path}: "]


def test_read_passphrase_confirms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    answers = iter(["one", "two"])
    monkeypatch.setattr(wallet_module.getpass, "getpass", lambda prompt: next(answers))
    with pytest.raises(UsageError, match="do not match"):
        read_passphrase("New: ", confirm=True)


def test_import_private_key_and_keystore(tmp_path: Path) -> None:
    assert import_wallet(tmp_path / "a.json", PASSPHRASE, private_key=KEY_HEX) == KEY_ADDRESS
    assert import_wallet(tmp_path / "b.json", "x", private_key=f" 0x{KEY_HEX}\n") == KEY_ADDRESS
    assert (
        import_wallet(tmp_path / "c.json", "y", private_key=bytes.fromhex(KEY_HEX)) == KEY_ADDRESS
    )
    # re-encrypt another keystore under a new passphrase
    address = import_wallet(
        tmp_path / "d.json", "new", keystore=tmp_path / "b.json", keystore_passphrase="x"
    )
    assert address == KEY_ADDRESS == open_wallet(tmp_path / "d.json", passphrase="new").address
    # a keystore made by eth-account with PBKDF2 imports too
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(Account.encrypt(KEY_HEX, "p", kdf="pbkdf2", iterations=1000)))
    assert open_wallet(foreign, passphrase="p").address == KEY_ADDRESS


@pytest.mark.parametrize(
    "key",
    ["", "12", KEY_HEX[:-1] + "g", KEY_HEX + "00", "00" * 32, "ff" * 32, b"\x01" * 31],
)
def test_bad_private_keys_are_not_echoed(tmp_path: Path, key: str | bytes) -> None:
    with pytest.raises(UsageError) as raised:
        import_wallet(tmp_path / "w.json", PASSPHRASE, private_key=key)
    if isinstance(key, str) and len(key) > 8:
        assert key not in str(raised.value)
    assert not (tmp_path / "w.json").exists()


def test_import_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="exactly one"):
        import_wallet(tmp_path / "w.json", PASSPHRASE)
    with pytest.raises(UsageError, match="exactly one"):
        import_wallet(tmp_path / "w.json", PASSPHRASE, private_key=KEY_HEX, keystore=tmp_path)


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="empty passphrase"):
        create_wallet(tmp_path / "w.json", "")


def keystore(tmp_path: Path) -> dict:
    path = tmp_path / "good.json"
    create_wallet(path, PASSPHRASE)
    return json.loads(path.read_text())


def with_changes(document: dict, *path_and_value: tuple[tuple[str, ...], object]) -> dict:
    copy = json.loads(json.dumps(document))
    for path, value in path_and_value:
        target = copy
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return copy


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ((("version",), 4), "version"),
        ((("crypto",), None), "crypto"),
        ((("crypto", "cipher"), "aes-256-gcm"), "cipher"),
        ((("crypto", "kdf"), "argon2"), "kdf"),
        ((("crypto", "ciphertext"), "zz" * 32), "ciphertext"),
        ((("crypto", "mac"), "00"), "mac"),
        ((("crypto", "cipherparams"), []), "cipher parameters"),
        ((("crypto", "kdfparams", "n"), 1 << 30), "out of bounds"),  # 128 GiB of scrypt
        ((("crypto", "kdfparams", "n"), 1000), "out of bounds"),  # not a power of two
        ((("crypto", "kdfparams", "r"), 1 << 20), "out of bounds"),
        ((("crypto", "kdfparams", "p"), 0), "out of bounds"),
        ((("crypto", "kdfparams", "n"), "1024"), "scrypt parameters"),
        ((("crypto", "kdfparams", "dklen"), 64), "derivation parameters"),
        ((("crypto", "kdfparams", "salt"), "x" * 5000), "salt"),
        ((("address",), "0x1234"), "address"),
    ],
)
def test_hostile_keystores(tmp_path: Path, change: tuple, reason: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(with_changes(keystore(tmp_path), change)))
    with pytest.raises(UsageError, match=reason) as raised:
        open_wallet(path, passphrase=PASSPHRASE)
    assert "\n" not in str(raised.value)


def test_hostile_pbkdf2_rounds(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    document = Account.encrypt(KEY_HEX, "p", kdf="pbkdf2", iterations=1000)
    document["crypto"]["kdfparams"]["c"] = 10**12
    path.write_text(json.dumps(document))
    with pytest.raises(UsageError, match="rounds out of bounds"):
        open_wallet(path, passphrase="p")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe not json",
        b"[]",
        b'"a string"',
        b"[" * 60_000 + b"]" * 60_000,  # deep nesting, over the size limit
        b"[" * 30_000 + b"]" * 30_000,  # deep nesting under it
        b'{"version": 3, "pad": "' + b"x" * 70_000 + b'"}',
    ],
)
def test_not_keystores(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    for operation in (lambda: open_wallet(path, passphrase="p"), lambda: wallet_address(path)):
        with pytest.raises(UsageError, match="not a") as raised:
            operation()
        assert "\n" not in str(raised.value)


def test_an_edited_address_field_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    create_wallet(path, PASSPHRASE)
    document = json.loads(path.read_text())
    document["address"] = "ab" * 20
    path.write_text(json.dumps(document))
    assert wallet_address(path).lower() == "0x" + "ab" * 20  # what the file claims
    with pytest.raises(UsageError, match="does not match its key"):
        open_wallet(path, passphrase=PASSPHRASE)


def test_missing_file_and_unwritable_place(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read wallet"):
        wallet_address(tmp_path / "missing.json")
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(StoreError, match="cannot write wallet"):
        create_wallet(not_a_directory / "w.json", PASSPHRASE)


def test_default_wallet_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert default_wallet_path() == Path.home() / ".config" / "thetadist" / "wallet.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_wallet_path() == tmp_path / "thetadist" / "wallet.json"
    monkeypatch.setenv(WALLET_ENV, "~/elsewhere.json")
    assert default_wallet_path() == Path.home() / "elsewhere.json"


# -- amounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "wei"),
    [
        ("1.5ether", 1_500_000_000_000_000_000),
        ("20 gwei", 20_000_000_000),
        ("1000wei", 1000),
        ("1000", 1000),
        (" 0.1 ETH ", 10**17),
        (".5gwei", 500_000_000),
        ("3.", 3),
        ("0.000000000000000001 ether", 1),
        ("1 finney", 10**15),
        (str(MAX_WEI), MAX_WEI),
    ],
)
def test_parse_amount(text: str, wei: int) -> None:
    assert parse_amount(text) == wei


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-1", "negative"),
        ("-0.5 ether", "negative"),
        ("1.5wei", "whole number of wei"),
        ("0.0000000000000000001 ether", "whole number of wei"),
        ("1e18", "not an amount"),
        ("1 bitcoin", "not an amount"),
        ("", "not an amount"),
        ("nan", "not an amount"),
        ("1,000", "not an amount"),
        ("١٢", "not an amount"),  # non-ASCII digits
        ("9" * 99, "256 bits"),
        ("1" * 101, "too long"),
    ],
)
def test_parse_amount_rejects(text: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        parse_amount(text)


@pytest.mark.parametrize(
    ("wei", "text"),
    [
        (0, "0 wei"),
        (999_999, "999999 wei"),
        (1_000_000, "0.001 gwei"),
        (20_000_000_000, "20 gwei"),
        (12_500_000_000_000_000, "0.0125 ether"),
        (10**18, "1 ether"),
        (10**24 + 1, "1000000.000000000000000001 ether"),
    ],
)
def test_format_amount(wei: int, text: str) -> None:
    assert format_amount(wei) == text


@given(st.integers(0, MAX_WEI) | st.integers(0, 10**20))
def test_amount_round_trip(wei: int) -> None:
    assert parse_amount(format_amount(wei)) == wei
    assert parse_amount(str(wei)) == wei


# -- the command group -----------------------------------------------------------------------

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(wallet_cli.app, list(args), env=env)


def summary(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_cli_new_show_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_terminal(monkeypatch)
    path = tmp_path / "w.json"
    env = {PASSPHRASE_ENV: PASSPHRASE}
    created = invoke("new", "-o", str(path), "--json", env=env)
    assert created.exit_code == 0, created.output
    record = summary(created.output)
    assert record["event"] == "summary" and record["wallet"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = invoke("show", str(path), "--json")
    assert summary(shown.output)["address"] == record["address"]
    human = invoke("show", str(path))
    assert human.exit_code == 0 and record["address"] in human.output
    again = invoke("new", "-o", str(path), env=env)
    assert isinstance(again.exception, UsageError)
    imported = invoke(
        "import", "--private-key-env", "MY_KEY", "-o", str(tmp_path / "i.json"), "--json",
        env={**env, "MY_KEY": KEY_HEX},
    )  # fmt: skip
    assert imported.exit_code == 0 and summary(imported.output)["address"] == KEY_ADDRESS
    copied = invoke(
        "import", "--from-keystore", str(tmp_path / "i.json"), "-o", str(tmp_path / "c.json"),
        env={wallet_cli.SOURCE_PASSPHRASE_ENV: PASSPHRASE, PASSPHRASE_ENV: "new one"},
    )  # fmt: skip
    assert copied.exit_code == 0, copied.output
    assert open_wallet(tmp_path / "c.json", passphrase="new one").address == KEY_ADDRESS
    for result in (created, shown, human, imported, copied):
        assert PASSPHRASE not in result.output and KEY_HEX not in result.output


def test_cli_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_terminal(monkeypatch)
    path = tmp_path / "default.json"
    env = {PASSPHRASE_ENV: PASSPHRASE, WALLET_ENV: str(path)}
    assert invoke("new", env=env).exit_code == 0
    assert summary(invoke("show", "--json", env=env).output)["wallet"] == str(path)


def test_cli_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_terminal(monkeypatch)
    out = str(tmp_path / "w.json")
    cases = [
        (("new", "-o", out), {}, "set THETADIST_PASSPHRASE"),
        (("import", "-o", out), {PASSPHRASE_ENV: "p"}, "--private-key-env"),
        (("import", "--private-key-env", "UNSET_VAR", "-o", out), {PASSPHRASE_ENV: "p"}, "not set"),
        (
            ("import", "--private-key-env", "K", "--from-keystore", out, "-o", out),
            {"K": KEY_HEX, PASSPHRASE_ENV: "p"},
            "not both",
        ),
        (("import", "--private-key-env", "K", "-o", out), {"K": "zz", PASSPHRASE_ENV: "p"}, "hex"),
        (("show", str(tmp_path / "missing.json")), {}, "cannot read wallet"),
    ]
    for args, env, reason in cases:
        result = invoke(*args, env=env)
        assert isinstance(result.exception, UsageError), (args, result.output)
        assert reason in str(result.exception)
    assert not os.path.exists(out)


def test_cli_registered_in_thetadist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Through the real dispatcher once the lead has added the group to thetadist.cli."""
    from thetadist.cli import app, main

    if "wallet" not in {group.name for group in app.registered_groups}:
        pytest.skip("the wallet group is not registered in thetadist.cli yet")
    no_terminal(monkeypatch)
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    path = tmp_path / "w.json"
    with pytest.raises(SystemExit) as done:
        main(["wallet", "new", "-o", str(path), "--json"])
    assert done.value.code == 0
    with pytest.raises(SystemExit) as done:
        main(["wallet", "new", "-o", str(path), "--json"])
    captured = capsys.readouterr()
    assert done.value.code == 2 and len(captured.err.strip().splitlines()) == 1
    assert json.loads(captured.out.splitlines()[-1])["event"] == "error"
    assert PASSPHRASE not in captured.out + captured.err
