"""Running an async library call from a command, stopping cleanly on SIGINT or SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from thetadist.net.switching import short_switch_interval

T = TypeVar("T")


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one real error inside nested exception groups (Trio nurseries wrap them)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    walk(group)
    return leaves[0] if leaves else group


def run_until_signal(call: Callable[[], Awaitable[T]]) -> tuple[T | None, bool]:
    """Run ``call()`` under Trio; return ``(result, interrupted)``.

    Runs with a short thread switch interval (:mod:`thetadist.net.switching`).  SIGINT and
    SIGTERM cancel the call (its ``finally`` blocks run: staging flushed, tracker
    told we stopped) and give ``(None, True)``.  Errors raised by the call come out as
    themselves, not wrapped in exception groups.
    """
    outcome: dict[str, object] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        outcome["interrupted"] = True
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch_signals)
            outcome["result"] = await call()
            nursery.cancel_scope.cancel()

    try:
        with short_switch_interval():
            trio.run(main)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None
    return outcome.get("result"), bool(outcome.get("interrupted"))  # type: ignore[return-value]
