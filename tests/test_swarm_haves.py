"""HAVEs for pieces stored close together go out together: after HAVE_DELAY, or at once with
the next message the session sends (after it, so a BITFIELD still comes first)."""

from __future__ import annotations

from collections import deque

import trio
import trio.testing

from thetadist.errors import LocalProtocolError
from thetadist.net.swarm import HAVE_DELAY, PeerSession
from thetadist.wire import Goodbye, GoodbyeReason, Have, KeepAlive, Message, State


class RecordingConnection:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.our_state = State.ESTABLISHED

    def send(self, message: Message) -> bytes:
        if self.our_state is State.CLOSED:
            raise LocalProtocolError(f"{type(message).__name__} after GOODBYE")
        self.sent.append(message)
        if isinstance(message, Goodbye):
            self.our_state = State.CLOSED
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


async def test_nothing_follows_a_goodbye_not_even_waiting_haves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session, conn = bare_session()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session._have_sender)
        session.announce(5)
        goodbye = Goodbye(GoodbyeReason.PAYMENT_REQUIRED, "no")
        session.send(goodbye)  # the waiting HAVE must not follow it
        session.send(KeepAlive())  # nor anything else another task still wants to say
        session.announce(6)
        await trio.sleep(HAVE_DELAY * 2)
        nursery.cancel_scope.cancel()
    assert conn.sent == [goodbye]
