"""What client commands print: a human form on stdout (a line, or a table with headers), or
with `--json` the same result as JSON, one object per line; and progress bars on stderr.

Tables are drawn by `rich`: with a rule under bold headers on a terminal, as plain aligned
columns otherwise (what `awk` and `cut` expect), never wider than their content.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from s2s.rfc3339 import format_ms

TABLE_WIDTH_MAX = 100_000
"""Columns off a terminal are as wide as their widest cell, up to this many characters a line."""


def print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, default=str))


def format_time(ms: int | None) -> str:
    return "" if ms is None else format_ms(ms)


class Output:
    """One command's results: as text, or as JSON lines with `--json`."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def result(self, text: str, data: dict[str, Any]) -> None:
        """One result: `text` for people, `data` for `--json`."""
        if self.as_json:
            print_json(data)
        else:
            print(text)

    def document(self, data: Any) -> None:
        """A result whose human form is JSON too (a configuration)."""
        print_json(data)

    def listing(
        self, columns: Sequence[str], rows: Iterable[Sequence[str]], items: Iterable[Any]
    ) -> None:
        """A list: a table of `columns` and `rows`, or each of `items` as a JSON line."""
        if self.as_json:
            for item in items:
                print_json(item)
            return
        print(render_table(columns, rows, sys.stdout.isatty()), end="")


def render_table(columns: Sequence[str], rows: Iterable[Sequence[str]], terminal: bool) -> str:
    """Aligned columns under their headers, each line without trailing spaces."""
    table = Table(
        box=box.SIMPLE_HEAD if terminal else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold" if terminal else "",
        highlight=False,
    )
    for column in columns:
        table.add_column(column, no_wrap=not terminal)
    for row in rows:
        table.add_row(*row)
    buffer = io.StringIO()
    width = os.get_terminal_size().columns if terminal and _has_terminal_size() else None
    console = Console(
        file=buffer,
        width=width or TABLE_WIDTH_MAX,
        force_terminal=terminal,
        no_color=not terminal,
        highlight=False,
        markup=False,
        emoji=False,
    )
    console.print(table)
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def _has_terminal_size() -> bool:
    try:
        os.get_terminal_size()
    except OSError:
        return False
    return True


# --- progress ------------------------------------------------------------------------------

PROGRESS_WIDTH = 120


class ProgressBar:
    """A bar on stderr; `advance` is cheap enough to call per batch."""

    REFRESH_INTERVAL_S = 0.1

    def __init__(self, progress: Progress | None, description: str) -> None:
        self._progress = progress
        self._task = None if progress is None else progress.add_task(description, total=None)
        self._refreshed_at = 0.0

    def set_total(self, total: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)

    def advance(self, amount: int) -> None:
        if self._progress is None or self._task is None:
            return
        self._progress.advance(self._task, amount)
        now = time.monotonic()
        if now - self._refreshed_at >= self.REFRESH_INTERVAL_S:
            self._refreshed_at = now
            self._progress.refresh()


def progress_wanted(flag: bool | None, to_or_from_file: bool) -> bool:
    """`--progress`/`--no-progress`, else a bar when a file is read or written and a person
    watches stderr."""
    if flag is not None:
        return flag
    return to_or_from_file and sys.stderr.isatty()


@contextmanager
def progress_bar(enabled: bool, description: str, unit: str) -> Iterator[ProgressBar]:
    """A bar counting `unit` ("records" or "bytes"), shown while the block runs and left on
    stderr at its end; a bar that does nothing if not `enabled`."""
    if not enabled:
        yield ProgressBar(None, description)
        return
    columns: list[str | ProgressColumn] = [TextColumn("{task.description}"), BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [MofNCompleteColumn(), TextColumn(unit), TaskProgressColumn()]
    columns.append(TimeElapsedColumn())
    # Off a terminal (a log file), the final state is printed once, on a line this wide.
    console = Console(stderr=True, width=None if sys.stderr.isatty() else PROGRESS_WIDTH)
    # Refreshed by `advance`, on the loop: rich's own refresh thread is not needed.
    progress = Progress(*columns, console=console, auto_refresh=False)
    with progress:
        yield ProgressBar(progress, description)
        progress.refresh()
