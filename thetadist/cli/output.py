"""How commands talk to people (rich) and to scripts (``--json``: NDJSON on stdout).

In JSON mode every event is one line ``{"event": kind, ...}`` and every command ends with one
``{"event": "summary", ...}`` line on success or ``{"event": "error", ...}`` on failure.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from thetadist.events import Event, VoucherReceived, VoucherSigned

#: Events a transfer prints by the thousand; buffered for at most FLUSH_INTERVAL seconds.
_BULK_EVENTS = frozenset({"piece_stored", "chunks_copied"})
FLUSH_INTERVAL = 0.1


class Output:
    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.console = Console(stderr=False, highlight=False)
        self.errors = Console(stderr=True, highlight=False)
        self._progress: Progress | None = None
        self._task: Any = None
        self._flushed = 0.0

    # -- machine-readable -------------------------------------------------------------

    def emit(self, record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        # A line per stored piece, flushed one by one, cost a fetcher 4 % of its event loop:
        # those are flushed at most every FLUSH_INTERVAL, every other event at once (and
        # with it whatever was waiting).
        now = time.monotonic()
        if record.get("event") not in _BULK_EVENTS or now - self._flushed >= FLUSH_INTERVAL:
            sys.stdout.flush()
            self._flushed = now

    def event(self, event: Event) -> None:
        # One voucher per piece each way would double the NDJSON a transfer prints; their
        # totals ride on `progress` and the summary, every voucher is in the ledger
        # (`thetadist tickets list`).
        if self.json_mode and not isinstance(event, VoucherSigned | VoucherReceived):
            self.emit(event.as_json())

    def summary(self, record: dict[str, Any], title: str) -> None:
        if self.json_mode:
            self.emit({"event": "summary", **record})
            return
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for key, value in record.items():
            table.add_row(key.replace("_", " "), _human(key, value))
        self.console.print(table)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.json_mode:
            return
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(cell) for cell in row))
        self.console.print(table)

    def note(self, text: str) -> None:
        if not self.json_mode:
            self.console.print(text)

    def error(self, kind: str, message: str, exit_code: int) -> None:
        first_line = message.strip().splitlines()[0] if message.strip() else kind
        if self.json_mode:
            self.emit(
                {"event": "error", "error": kind, "message": first_line, "exit_code": exit_code}
            )
        self.errors.print(
            f"[red]error:[/red] {escape(first_line)}", markup=True, highlight=False, soft_wrap=True
        )

    # -- progress ---------------------------------------------------------------------

    @contextmanager
    def progress(
        self, description: str, total: int | None, sources: dict[str, int] | None = None
    ) -> Iterator[None]:
        """A live progress bar (terminals only); ``sources`` — a dict the caller keeps
        updating, name → bytes — is shown below it as a table of where the bytes come from."""
        if self.json_mode or not self.console.is_terminal:
            yield
            return
        with _SourcesProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            sources=sources,
        ) as progress:
            self._progress = progress
            self._task = progress.add_task(description, total=total)
            try:
                yield
            finally:
                self._progress = None

    def set_sources(self, sources: dict[str, int]) -> None:
        if isinstance(self._progress, _SourcesProgress):
            self._progress.sources = sources

    def advance(self, amount: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)


class _SourcesProgress(Progress):
    def __init__(self, *columns: Any, sources: dict[str, int] | None, **options: Any) -> None:
        self.sources = sources  # before Progress.__init__, which may render already
        super().__init__(*columns, **options)

    def get_renderables(self) -> Iterator[Any]:
        from thetadist.units import format_size

        yield self.make_tasks_table(self.tasks)
        if self.sources:
            table = Table.grid(padding=(0, 2))
            ranked = sorted(self.sources.items(), key=lambda item: -item[1])
            for name, size in ranked[:10]:
                table.add_row(f"  {name}", format_size(size))
            if len(ranked) > 10:
                table.add_row(f"  … {len(ranked) - 10} more", "")
            yield table


def _human(key: str, value: Any) -> str:
    from thetadist.units import format_size

    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and ("bytes" in key or key.endswith("size"))
    ):
        return f"{format_size(value)} ({value:,} B)"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_human(key, v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)
