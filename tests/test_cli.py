"""The command line: exit codes, one-line errors, NDJSON output, and the main workflows."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thetadist.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def ndjson(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_create_show_verify(capsys, small_tree: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "m.tdm"
    code, out, _ = run(capsys, "manifest", "create", str(small_tree), "-o", str(out_file), "--json")
    assert code == 0
    summary = ndjson(out)[-1]
    assert summary["event"] == "summary" and summary["files"] == 6
    code, out, _ = run(capsys, "manifest", "show", str(out_file), "--json")
    shown = ndjson(out)[-1]
    assert shown["id"] == summary["id"]
    assert len(shown["info_hash"]) == 40 and shown["info_hash"] == shown["id"][:40]
    code, out, _ = run(capsys, "manifest", "verify", str(out_file), str(small_tree), "--json")
    assert code == 0 and ndjson(out)[-1]["intact"] is True


def test_verify_reports_corruption_and_missing(capsys, small_tree: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "m.tdm"
    run(capsys, "manifest", "create", str(small_tree), "-o", str(out_file))
    with open(small_tree / "data/archive.pak", "r+b") as handle:
        handle.seek(1_000_000)
        handle.write(b"corrupt")
    (small_tree / "readme.txt").unlink()
    code, out, err = run(capsys, "manifest", "verify", str(out_file), str(small_tree), "--json")
    assert code == 4
    records = ndjson(out)
    problems = {r["path"]: r for r in records if r["event"] == "file_problem"}
    assert problems["readme.txt"]["missing"] is True
    assert (
        problems["data/archive.pak"]["corrupt_pieces"]
        and not problems["data/archive.pak"]["missing"]
    )
    assert records[-1]["event"] == "error" and records[-1]["exit_code"] == 4
    assert len(err.strip().splitlines()) == 1


def test_signing_and_trust(capsys, small_tree: Path, tmp_path: Path) -> None:
    key = tmp_path / "pub.key"
    code, out, _ = run(capsys, "keys", "generate", "-o", str(key), "--json")
    public = ndjson(out)[-1]["public_key"]
    assert code == 0 and oct(key.stat().st_mode & 0o777) == "0o600"
    signed = tmp_path / "s.tdm"
    run(capsys, "manifest", "create", str(small_tree), "-o", str(signed), "--sign", str(key))
    code, _, _ = run(capsys, "manifest", "show", str(signed), "--trust", public)
    assert code == 0
    other = tmp_path / "other.key"
    run(capsys, "keys", "generate", "-o", str(other))
    code, _, err = run(capsys, "manifest", "show", str(signed), "--trust", str(other) + ".nope")
    assert code == 2 and "not a public key" in err
    code, _, _ = run(capsys, "keys", "generate", "-o", str(key))
    assert code == 2  # never overwrites a key


def test_diff_and_local_fetch(capsys, tmp_path: Path) -> None:
    from thetadist.sample import write_sample_builds

    v1, v2 = write_sample_builds(tmp_path)
    m1, m2 = tmp_path / "v1.tdm", tmp_path / "v2.tdm"
    run(capsys, "manifest", "create", str(v1), "-o", str(m1))
    run(capsys, "manifest", "create", str(v2), "-o", str(m2), "--previous", str(m1))
    code, out, _ = run(capsys, "manifest", "diff", str(m1), str(m2), "--json")
    records = ndjson(out)
    summary = records[-1]
    assert code == 0 and 0 < summary["bytes_to_fetch"] < summary["new_total_bytes"] / 5
    assert any(r["event"] == "file_renamed" for r in records)
    # From version 1 alone the patch cannot complete: a clear error, staging kept.
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "fetch", str(m2), "-o", str(out_dir), "--from", str(v1), "--json")
    assert code == 7 and "rerun" in err
    assert ndjson(out)[-1]["error"] == "TransportError"
    assert (out_dir / ".thetadist").is_dir()  # resumable
    code, out, _ = run(
        capsys, "fetch", str(m2), "-o", str(out_dir), "--from", str(v1), "--from", str(v2), "--json"
    )
    assert code == 0 and ndjson(out)[-1]["complete"] is True
    code, _, _ = run(capsys, "manifest", "verify", str(m2), str(out_dir))
    assert code == 0


def test_a_patch_cut_against_the_old_tree_fetches_less(capsys, tmp_path: Path) -> None:
    from thetadist.sample import write_sample_builds

    v1, v2 = write_sample_builds(tmp_path)
    m1, plain, aligned = tmp_path / "v1.tdm", tmp_path / "plain.tdm", tmp_path / "aligned.tdm"
    run(capsys, "manifest", "create", str(v1), "-o", str(m1))
    run(capsys, "manifest", "create", str(v2), "-o", str(plain), "--previous", str(m1))
    code, out, _ = run(
        capsys, "manifest", "create", str(v2), "-o", str(aligned), "--previous", str(m1),
        "--previous-dir", str(v1), "--json",
    )  # fmt: skip
    assert code == 0 and ndjson(out)[-1]["derived_chunks"] > 0
    sizes = {}
    for label, patch in (("plain", plain), ("aligned", aligned)):
        code, out, _ = run(capsys, "manifest", "diff", str(m1), str(patch), "--json")
        summary = ndjson(out)[-1]
        assert code == 0 and summary["manifest_bytes"] < summary["full_manifest_bytes"] / 2
        sizes[label] = summary["data_bytes_to_fetch"]
    assert sizes["aligned"] < sizes["plain"]
    out_dir = tmp_path / "out"
    code, out, _ = run(
        capsys, "fetch", str(aligned), "-o", str(out_dir), "--from", str(v1), "--from", str(v2),
        "--json",
    )  # fmt: skip
    assert code == 0 and ndjson(out)[-1]["complete"] is True
    assert run(capsys, "manifest", "verify", str(aligned), str(out_dir))[0] == 0


@pytest.mark.parametrize(
    "argv, code, text",
    [
        (["manifest", "show", "/nonexistent.tdm"], 3, "cannot read manifest"),
        (["manifest", "create", "/nonexistent-dir", "-o", "/tmp/x.tdm"], 2, "not a directory"),
        (["manifest", "create", ".", "-o", "/tmp/x.tdm", "--avg-size", "lots"], 2, "not a size"),
        (["manifest", "create", ".", "-o", "/tmp/x.tdm", "--avg-size", "1"], 3, "chunker sizes"),
        (["manifest", "nosuchcommand"], 2, "No such command"),
        (["manifest", "show", "/tmp/[bold]x[/y].tdm"], 3, "/tmp/[bold]x[/y].tdm"),
    ],
)
def test_errors_are_one_line(capsys, argv, code, text) -> None:
    got, _, err = run(capsys, *argv)
    assert got == code
    assert text in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_hostile_manifest_file_via_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tdm"
    bad.write_bytes(b"d5:filesl" + b"l" * 5000 + b"e" * 5000 + b"ee")
    result = subprocess.run(
        [sys.executable, "-m", "thetadist", "manifest", "show", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 3
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_fetch_with_hostile_manifest_writes_nothing(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.tdm"
    bad.write_bytes(b"i1e")
    out_dir = tmp_path / "out"
    code, _, _ = run(capsys, "fetch", str(bad), "-o", str(out_dir))
    assert code == 3 and not out_dir.exists()
