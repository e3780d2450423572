"""What a session asks its peer for: never a run the connection still has outstanding."""

from __future__ import annotations

from types import SimpleNamespace

from test_swarm_haves import bare_session

from thetadist.wire import ChunkRun, Request


class OneShotPicker:
    def __init__(self, runs: list[ChunkRun]) -> None:
        self.runs = runs

    def pick(self, peer_id: bytes, now: float) -> list[ChunkRun]:
        runs, self.runs = self.runs, []
        return runs


async def test_a_run_still_pending_on_the_connection_is_not_requested_again() -> None:
    """The picker takes back a stalled peer's runs and the session sends CANCEL for them; until
    the peer answers (the piece, or a REJECT), the connection still counts them as requested.
    Picked for the same peer again meanwhile, such a run must not be requested twice (that is
    a protocol error, and it ended the whole fetch): the answer to the first REQUEST settles
    it."""
    session, conn = bare_session()
    pending, fresh = ChunkRun(5, 0, 1), ChunkRun(6, 0, 2)
    conn.requests_sent = {pending}  # type: ignore[attr-defined]
    session.swarm = SimpleNamespace(picker=OneShotPicker([pending, fresh]))  # type: ignore[assignment]
    session.joined = True
    session.declined = None
    session._end_reason = None
    session.peer_id = b"\x01" * 20
    session.fill_pipeline()
    assert conn.sent == [Request(*fresh)]
