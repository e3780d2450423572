"""HAVEs for pieces stored close together go out together: after HAVE_DELAY, or at once with
the next message the session sends (after it, so a BITFIELD still comes first)."""

from __future__ import annotations

from collections import deque

import trio
import trio.testing

from thetadist.net.swarm import HAVE_DELAY, PeerSession
from thetadist.wire import Have, KeepAlive, Message


class RecordingConnection:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, message: Message) -> bytes:
        self.sent.append(message)
        return repr(message).encode()


def bare_session() -> tuple[PeerSession, RecordingConnection]:
    session = PeerSession.__new__(PeerSession)
    conn = RecordingConnection()
    session.conn = conn  # type: ignore[assignment]
    session._outbox = deque()
    session._outbox_ready = trio.Event()
    session._haves = []
    session._haves_ready = trio.Event()
    return session, conn


async def test_haves_wait_for_the_delay_then_go_out_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session, conn = bare_session()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session._have_sender)
        session.announce(3)
        await trio.sleep(HAVE_DELAY / 2)
        session.announce(9)
        assert conn.sent == []  # nothing yet: waiting for company
        await trio.sleep(HAVE_DELAY)
        assert conn.sent == [Have(3), Have(9)]
        assert len(session._outbox) == 2 and session._outbox_ready.is_set()
        session.announce(4)
        await trio.sleep(HAVE_DELAY * 1.5)
        assert conn.sent[-1] == Have(4)
        nursery.cancel_scope.cancel()


def test_a_message_takes_the_waiting_haves_along_after_itself() -> None:
    session, conn = bare_session()
    session.announce(1)
    session.announce(2)
    session.send(KeepAlive())
    assert conn.sent == [KeepAlive(), Have(1), Have(2)]
    assert session._haves == []
