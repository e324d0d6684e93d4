"""Command-line values of `s2s`: the parser, checked argument types, and options that fall back
to an S2S_* environment variable.

A bad value, on the command line or in the environment, is a usage error: one line naming the
flag or variable, what it must be and what it got, then exit status 2 (argparse's convention).
Environment variables are read only by the command that uses them, after parsing, so a bad one
never breaks `s2s --help` or another command; one set to the empty string counts as unset.

Both halves of the command line use it: the client commands here in `client/`, and `s2s serve`
through `server/cli.py`, the one server module that imports the client.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from s2s.encryption_key import KEY_BYTES, EncryptionKey
from s2s.errors import S2Error
from s2s.logs import LOG_FORMATS, LOG_LEVELS
from s2s.rfc3339 import parse_ms
from s2s.wire import U64_MAX


class UsageError(Exception):
    """A bad value or combination found after parsing (e.g. a flag the action does not take,
    a bad input line); reported like argparse's own errors."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (argparse prints the whole usage
    first, many lines for `s2s serve`), and whose positionals may come before, between or
    after its flags.

    The second matters for commands that take `BASIN STREAM` or `s2://BASIN/STREAM`: the
    stream is an optional positional, and argparse alone would give it the next word when
    flags split the positionals (`fence b s --fencing-token t new` would fail), so a command
    parser without subcommands collects its flags first, then matches every positional at
    once (`parse_known_intermixed_args`).
    """

    _intermixing = False

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._subparsers is not None or self._intermixing:
            return super().parse_known_args(args, namespace)
        # parse_known_intermixed_args calls back into parse_known_args, twice.
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argument type: a whole number from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high}, got {text!r}"
            )
        return value

    return parse


def number(low: float, *, low_inclusive: bool = True) -> Callable[[str], float]:
    """An argument type: a finite number above `low` (or from `low` if `low_inclusive`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above = value >= low if low_inclusive else value > low
        if not (math.isfinite(value) and above):
            bound = f"at least {low:g}" if low_inclusive else f"greater than {low:g}"
            raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text!r}")
        return value

    return parse


port = whole_number(0, 65535)
seq_num = whole_number(0, U64_MAX)
"""Sequence numbers, timestamps and offsets: unsigned 64-bit on the wire."""


def choice(*values: str) -> Callable[[str], str]:
    """An argument type (for a flag that has a variable, where `choices` does not apply): one
    of `values`."""

    def one_of(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(values)}, got {text!r}")
        return text

    return one_of


DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION_UNITS_MS["w"] = 7 * DURATION_UNITS_MS["d"]
_DURATION_PART = re.compile(r"(\d{1,12})(ms|s|m|h|d|w)")
DURATION_EXAMPLES = "500ms, 90s, 15m, 1h30m, 7d or 2w"


def duration_ms(text: str) -> int:
    """A duration as people write it, `1h30m`, `500ms`, `7d`, in milliseconds: whole numbers
    each with a unit (ms, s, m, h, d, w), largest first or not."""
    position, total = 0, 0
    while position < len(text) and (part := _DURATION_PART.match(text, position)):
        total += int(part.group(1)) * DURATION_UNITS_MS[part.group(2)]
        position = part.end()
    if not text or position != len(text) or total > U64_MAX:
        raise argparse.ArgumentTypeError(
            f"must be a duration such as {DURATION_EXAMPLES}, got {text!r}"
        )
    return total


def duration_s(text: str) -> int:
    """A duration in whole seconds (`1h`, `7d`), for settings the server keeps in seconds."""
    ms = duration_ms(text)
    if ms % 1000:
        raise argparse.ArgumentTypeError(f"must be whole seconds, got {text!r}")
    return ms // 1000


def boolean(text: str) -> bool:
    """A switch's environment variable: 1, true, yes or on; 0, false, no or off."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(
        f"must be 1, true, yes or on, or 0, false, no or off, got {text!r}"
    )


def nonempty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def encryption_key(text: str) -> str:
    """A stream's key as the server takes it: base64 of 32 bytes."""
    try:
        key = EncryptionKey.from_header(text)
        assert key is not None
        key.material("the stream's")
    except S2Error:
        raise argparse.ArgumentTypeError(
            f"must be base64 of {KEY_BYTES} bytes (e.g. from `openssl rand -base64 {KEY_BYTES}`)"
        ) from None
    return key.header_value


def pem_certificates(path: str) -> bytes:
    """The contents of a file of PEM certificates (a CA bundle, or a server's self-signed
    certificate), checked to hold at least one."""
    try:
        with open(path, "rb") as file:
            pem = file.read()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path!r}: {error.strerror}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError):
        raise argparse.ArgumentTypeError(
            f"{path!r} holds no PEM certificate ('-----BEGIN CERTIFICATE-----')"
        ) from None
    return pem


def rfc3339_ms(text: str) -> int:
    """An RFC 3339 time with an offset (2027-01-01T00:00:00Z), as milliseconds since the epoch."""
    ms = parse_ms(text)
    if ms is None:
        raise argparse.ArgumentTypeError(
            f"is not an RFC 3339 time with an offset, e.g. 2027-01-01T00:00:00Z: {text!r}"
        )
    return ms


def json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise argparse.ArgumentTypeError("is JSON nested too deeply") from None
    except ValueError as error:  # not JSON, or a number of more than 4,300 digits
        raise argparse.ArgumentTypeError(f"is not valid JSON ({error}): {text!r}") from None


def server_address(text: str) -> str:
    """A gRPC target HOST:PORT, e.g. 127.0.0.1:50051 or [::1]:50051."""
    hostname, colon, port_text = text.rpartition(":")
    # `isdigit` alone lets through what `int` raises on: "²", or more than 4,300 digits.
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not (colon and hostname and digits and 1 <= int(port_text) <= 65535):
        raise argparse.ArgumentTypeError(
            f"must be HOST:PORT, such as 127.0.0.1:50051 or [::1]:50051, got {text!r}"
        )
    return text


@dataclass(frozen=True)
class EnvOption:
    """A flag whose default comes from an environment variable, then from `default`. A
    `switch` takes no value on the command line (it means True); its variable is `boolean`."""

    flag: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    switch: bool = False

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        shown = "none" if self.default is None else self.default
        help_text = f"{self.help} (env {self.env}, default {shown})"
        if self.switch:
            parser.add_argument(
                self.flag, action="store_const", const=True, default=None, help=help_text
            )
            return
        parser.add_argument(self.flag, type=self.parse, default=None, help=help_text)

    def resolve(self, parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        """Fill in the value if the flag was not given: the variable's, else the default."""
        if getattr(args, self.dest) is not None:
            return
        raw = os.environ.get(self.env)
        if not raw:
            setattr(args, self.dest, self.default)
            return
        try:
            setattr(args, self.dest, self.parse(raw))
        except argparse.ArgumentTypeError as error:
            parser.error(f"environment variable {self.env} {error}")


def log_options(level_default: str) -> tuple[EnvOption, EnvOption]:
    """`--log-level` and `--log-format`, for `s2s serve` and for every client command."""
    return (
        EnvOption(
            "--log-level",
            "S2S_LOG_LEVEL",
            choice(*LOG_LEVELS),
            level_default,
            "the least severe log lines written to stderr: debug, info, warning or error",
        ),
        EnvOption(
            "--log-format",
            "S2S_LOG_FORMAT",
            choice(*LOG_FORMATS),
            "text",
            "log lines as text, or as json (one object per line)",
        ),
    )


S2_URI_SCHEME = "s2://"


def split_s2_uri(text: str) -> tuple[str, str] | None:
    """`s2://BASIN/STREAM` as (basin, stream), `s2://BASIN` as (basin, ""), anything else None.
    A stream name may hold slashes: only the first one ends the basin."""
    if not text.startswith(S2_URI_SCHEME):
        return None
    basin, _, stream = text.removeprefix(S2_URI_SCHEME).partition("/")
    return basin, stream
