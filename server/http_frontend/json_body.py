"""JSON from clients, parsed so that no body can make a handler fail with a 500.

- Text must be UTF-8 (a leading byte order mark is ignored). `json.loads` given bytes would
  also take UTF-16 and UTF-32, and UTF-8-encoded surrogates, which no string may hold.
- Nesting beyond what Python's parser can recurse through is `bad_json`, not a
  `RecursionError` (100,000 levels answered 500 before, issue 12 item 6).
- `checked` documents also nest at most `JSON_DEPTH_MAX` levels and hold no unpaired
  surrogate escape (`"\\ud800"`) in any string or key: later code may recurse through them
  (`repr` in an error message, `json.dumps`) or encode them as UTF-8 (a name's length), and
  both failed with a 500. Every route checks its body so, except appends: there the record
  converter checks each value's type without recursing and encodes each string itself, and
  a walk over every record would cost each append.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from s2s.errors import S2Error

JSON_DEPTH_MAX = 32
"""Deepest nesting of a checked document. S2's bodies nest at most 4 levels (a basin
config's default stream config's retention policy)."""


def parse_json(data: bytes, *, checked: bool = True) -> Any:
    """The JSON value of `data`; `bad_json` naming the problem if it is not acceptable."""
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise S2Error(
            "bad_json", f"body is not valid UTF-8 (bad byte at offset {error.start})"
        ) from None
    except RecursionError:
        raise S2Error("bad_json", _too_deep()) from None
    except ValueError as error:
        # CPython's message for an over-long integer ends with advice for Python programmers.
        detail = str(error).split("; use sys.set_int_max_str_digits", 1)[0]
        raise S2Error("bad_json", f"malformed JSON: {detail}") from None
    if checked:
        _check(value)
    return value


def _check(value: Any) -> None:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if type(item) is str:
            _check_text(item)
        elif type(item) is dict or type(item) is list:
            if depth > JSON_DEPTH_MAX:
                raise S2Error("bad_json", _too_deep())
            children: Iterable[Any] = item
            if type(item) is dict:
                for key in item:
                    _check_text(key)
                children = item.values()
            pending.extend((child, depth + 1) for child in children)


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise S2Error("bad_json", unpaired_surrogate("a string")) from None


def unpaired_surrogate(what: str) -> str:
    return f"{what} holds an unpaired UTF-16 surrogate escape, which is not a character"


def _too_deep() -> str:
    return f"JSON nests deeper than {JSON_DEPTH_MAX} levels"
