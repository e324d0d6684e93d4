"""The folded states of stores, kept between the HTTP API's calls so a call reads only the
records appended since the last one, not the whole stream.

Every call brings its store's view up to the tail with reads made through the caller's
`ScopedStore`, so each is checked against the caller's token (`read`) before the view is
used, whoever filled it. A view belongs to one incarnation of its stream (its `sid`): a
store deleted and made again starts a new one. Views are kept least recently used first,
within `VIEWS_CHARS_MAX` (counted as the characters of keys and values, plus a per-entry
overhead); a store larger than that alone is folded for the call and not kept.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
from dataclasses import dataclass, field

from s2s.errors import S2Error
from s2s.kv_format import STREAM_CONFIG
from s2s.kv_state import KvState
from server.kv_store.folding import read_to_tail
from server.reader import ReadLimits, ReadOutput, ReadStart
from server.scoped_store import ScopedStore
from server.streamstore import StreamStore

VIEWS_CHARS_MAX = 64 * 1024 * 1024
"""What the kept views may hold: about 64 MiB of keys and values (more in Python objects)."""
ENTRY_OVERHEAD_CHARS = 160
"""What one entry costs beside its key and value: a dict slot, an `Entry`, two strings."""


@dataclass
class _View:
    sid: int
    state: KvState = field(default_factory=KvState)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    size: int = 0
    sorted_keys: list[str] | None = None
    sorted_at: int = -1
    """The position `sorted_keys` was made at."""

    def keys_in_order(self) -> list[str]:
        if self.sorted_at != self.state.position or self.sorted_keys is None:
            self.sorted_keys = sorted(self.state.entries)
            self.sorted_at = self.state.position
        return self.sorted_keys


@dataclass(frozen=True)
class StoreView:
    """A store's state at a revision, for one call: use it before the next await."""

    state: KvState
    _view: _View | None

    def keys_from(self, prefix: str, start_after: str) -> tuple[list[str], int]:
        """The store's keys in order, and the index of the first one after `start_after`
        that starts with `prefix` or would follow it."""
        keys = self._view.keys_in_order() if self._view else sorted(self.state.entries)
        start = max(bisect.bisect_right(keys, start_after), bisect.bisect_left(keys, prefix))
        return keys, start


class KvViews:
    def __init__(self, store: StreamStore, chars_max: int = VIEWS_CHARS_MAX) -> None:
        self._store = store
        self._chars_max = chars_max
        self._views: collections.OrderedDict[tuple[str, str], _View] = collections.OrderedDict()
        self._chars = 0

    async def current(self, scoped: ScopedStore, basin: str, stream: str) -> StoreView:
        """The store in `stream` (as the caller names it) as of its tail; an empty state at
        revision 0 if the stream does not exist. `permission_denied` if the caller may not
        read it."""
        full = scoped.principal.stream_prefix + stream
        key = (basin, full)
        sid = self._store.stream_sid(basin, full)
        view = self._views.get(key)
        if view is None or view.sid != sid:
            self._forget(key)
            view = None
            if sid is not None:  # kept at once, so calls at the same time share its lock
                view = self._views[key] = _View(sid)

        async def read(start: ReadStart, limits: ReadLimits) -> ReadOutput:
            return await scoped.read(basin, stream, start, limits, STREAM_CONFIG)

        if view is None:
            state = KvState()
            try:
                await read_to_tail(read, 0, state.fold)
            except S2Error as error:
                if error.code != "stream_not_found":
                    raise
            state.check_whole()
            return StoreView(state, None)
        async with view.lock:
            try:
                await read_to_tail(read, view.state.position, view.state.fold)
            except S2Error as error:
                if error.code == "stream_not_found":
                    self._forget(key)
                    return StoreView(KvState(), None)
                raise
            view.state.check_whole()
            self._keep(key, view)
        return StoreView(view.state, view)

    def _keep(self, key: tuple[str, str], view: _View) -> None:
        self._forget(key)
        view.size = view.state.live_chars + ENTRY_OVERHEAD_CHARS * len(view.state.entries)
        if view.size > self._chars_max:
            return
        self._views[key] = view
        self._chars += view.size
        while self._chars > self._chars_max:
            _, evicted = self._views.popitem(last=False)
            self._chars -= evicted.size

    def _forget(self, key: tuple[str, str]) -> None:
        view = self._views.pop(key, None)
        if view is not None:
            self._chars -= view.size
