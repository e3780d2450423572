"""A game-patch pipeline, scripted with the thetadist library (no CLI, no printing inside).

Run it:  python docs/examples/patch_pipeline.py [WORKDIR]

1. the build system produced version 1 and version 2 of a game (here: the sample builds);
2. the publisher creates the version 2 manifest, linked to version 1 and signed;
3. the origin seeds version 2 behind a tracker;
4. a player's machine, which has version 1 installed, updates in place from the swarm —
   only the chunks that changed cross the network — and verifies the result.

It prints one JSON object: what the patch cost and where the bytes came from.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path

import trio

import thetadist
from thetadist.net.switching import short_switch_interval
from thetadist.sample import write_sample_builds
from thetadist.tracker.server import serve_tracker


async def pipeline(work: Path) -> dict[str, object]:
    v1_dir, v2_dir = write_sample_builds(work)
    key = thetadist.generate_key()
    v1 = thetadist.create_manifest(v1_dir, name="sample-game", version="1", sign_key=key)
    # Cut against the old tree: a holder of version 1 then fetches little but the new bytes.
    v2 = thetadist.create_manifest(
        v2_dir, name="sample-game", version="2", previous=v1, previous_dir=v1_dir, sign_key=key
    )
    v2.save(work / "v2.tdm")
    # What a player's client does: load the manifest, trusting only the publisher's key.
    trusted = thetadist.Manifest.load(work / "v2.tdm", trust=[thetadist.public_key_bytes(key)])
    installed = work / "installed"
    shutil.copytree(v1_dir, installed)
    events: list[str] = []

    async with trio.open_nursery() as nursery:
        tracker_port = await nursery.start(serve_tracker, "127.0.0.1", 0)
        tracker = f"http://127.0.0.1:{tracker_port}/announce"
        await nursery.start(
            partial(thetadist.seed, v2, v2_dir, listen=("127.0.0.1", 0), trackers=[tracker])
        )
        result = await thetadist.fetch(
            trusted,
            installed,
            trackers=[tracker],
            config=thetadist.SwarmConfig(listen=("127.0.0.1", 0)),
            on_event=lambda event: events.append(event.kind),
        )
        nursery.cancel_scope.cancel()

    report = thetadist.verify_tree(trusted, installed)
    return {
        "verified": report.intact,
        "predicted_bytes_to_fetch": thetadist.diff(v1, v2).bytes_to_fetch,
        "bytes_from_installed_v1": sum(result.bytes_from_local.values()),
        "bytes_from_peers": result.bytes_from_peers_total,
        "bytes_total": result.bytes_total,
        "seconds": result.seconds,
        "pieces_stored": events.count("piece_stored"),
    }


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    try:
        with short_switch_interval():  # as the CLI does: hashing threads get the GIL sooner
            print(json.dumps(trio.run(pipeline, work)))
    finally:
        if len(sys.argv) <= 1:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
