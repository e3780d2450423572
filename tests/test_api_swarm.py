"""The async library API over real loopback TCP, in one process, plus the example script."""

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

import thetadist
from thetadist.sample import write_sample_builds
from thetadist.tracker.server import serve_tracker

ROOT = Path(__file__).parent.parent


async def test_seed_and_two_fetchers_feed_each_other(tmp_path: Path) -> None:
    _, v2 = write_sample_builds(tmp_path)
    manifest = thetadist.create_manifest(v2)
    loopback = thetadist.SwarmConfig(listen=("127.0.0.1", 0))
    results: list[thetadist.FetchResult] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_tracker, "127.0.0.1", 0)
            tracker = f"http://127.0.0.1:{port}/announce"
            origin = await nursery.start(
                partial(
                    thetadist.seed,
                    manifest,
                    v2,
                    listen=("127.0.0.1", 0),
                    trackers=[tracker],
                    config=thetadist.SwarmConfig(max_upload_rate=6_000_000, super_seed=True),
                )
            )
            for name in ("a", "b"):
                results.append(
                    await nursery.start(
                        partial(
                            thetadist.fetch,
                            manifest,
                            tmp_path / name,
                            trackers=[tracker],
                            keep_seeding=True,
                            config=loopback,
                        )
                    )
                )
            while not all(r.complete for r in results):
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    origin_label = f"127.0.0.1:{origin.port}"
    for name, result in zip("ab", results, strict=True):
        assert thetadist.verify_tree(manifest, tmp_path / name).intact
        assert result.bytes_from_peers_total >= manifest.total_size
    from_fetchers = sum(
        sum(v for k, v in r.bytes_from_peers.items() if k != origin_label) for r in results
    )
    assert from_fetchers > 0, "the fetchers never fed each other"
    assert origin.totals.uploaded < 2 * manifest.total_size


def test_patch_pipeline_example_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs/examples/patch_pipeline.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["verified"] is True
    assert 0 < report["bytes_from_peers"] <= report["predicted_bytes_to_fetch"]
    assert report["bytes_from_installed_v1"] + report["bytes_from_peers"] == report["bytes_total"]
