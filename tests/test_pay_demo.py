"""The quick start's main job: ``thetadist demo`` runs a paid swarm on the in-process EVM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_pays_for_every_piece_and_redeems_exactly_what_was_signed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "thetadist", "demo", "--workdir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    summary = records[-1]
    assert summary["event"] == "summary"
    assert summary["verified"] is True
    assert summary["pieces_paid"] > 0
    assert summary["paid_wei"] > 0
    assert summary["redeemed_wei"] == summary["paid_wei"]
    assert 0 < summary["origin_redeemed_wei"] <= summary["redeemed_wei"]
    fetchers = summary["fetchers"]
    # the fetchers fed each other: some bytes (and so some payments) did not come from the origin
    assert sum(f["from_other_fetchers"] for f in fetchers) > 0
    assert summary["origin_redeemed_wei"] < summary["redeemed_wei"]


def test_free_demo_runs_without_a_chain(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "thetadist", "demo", "--free", "--workdir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["verified"] is True
    assert summary["payments"] == "free"
