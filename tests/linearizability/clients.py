"""The clients of a workload: each runs one kind of call on one stream in a loop and records
every operation. Kinds: gRPC unary appends (with conditional appends, fences and trims mixed
in), gRPC AppendSession pipelines, HTTP JSON appends (conditional ones mixed in), gRPC reads
and check-tails.

Errors that the contract defines (412 seq_num_mismatch / fencing_token_mismatch, a read beyond
the tail) are outcomes, and so is `storage` (a failed commit: no effect, ADR 0010); any other
error or a timeout is an unknown outcome. Clients invoke only while the server is up (`up`), so
an operation a kill interrupts was received, if at all, by the process that was killed. The
official SDK's clients are in `sdk_clients.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx

from client import (
    AppendSession,
    FencingTokenMismatchError,
    ReadUnwrittenError,
    S2SClient,
    S2SError,
    SeqNumMismatchError,
    Stream,
)
from s2s.records import fence_record, trim_record
from s2s.v1 import records_pb2 as pb
from tests.linearizability.history import (
    BEHIND_REFUSED,
    CONFLICT,
    NEVER_SENT,
    STORAGE,
    Acked,
    Append,
    BeyondTail,
    Call,
    CheckTail,
    FencingTokenMismatch,
    NoEffect,
    Outcome,
    Read,
    Records,
    SeqNumMismatch,
    Tail,
    command_key,
)
from tests.linearizability.recorder import Recorder

BASIN = "linearizability"
NO_EFFECT_CODES = (STORAGE, CONFLICT)
"""The error codes with which the server promises an append had no effect."""
OPERATION_TIMEOUT_S = 10.0
PAUSE_MAX_S = 0.03
"""Each client pauses up to this long between operations, to keep histories checkable."""
SESSION_BATCHES_MAX = 3
"""Batches of one append session: a kill leaves them all unknown together, and each unknown
append open at once multiplies the checker's search (two session clients per stream with four
each put a 20 s run past 5 M steps)."""


class Unknown(Exception):
    """The call's outcome is unknown."""


@dataclass
class StreamView:
    """What clients last saw of a stream: where to aim conditional appends and reads."""

    next_seq: int = 0
    fencing_token: str = ""


@dataclass
class Workload:
    """What every client shares."""

    recorder: Recorder
    grpc_target: str
    http_url: str
    up: asyncio.Event
    stop: asyncio.Event
    views: dict[str, StreamView] = field(default_factory=dict)
    counter: int = 0

    def body(self, client: int) -> bytes:
        """A record body no other record has."""
        self.counter += 1
        return f"c{client}-{self.counter}".encode()


def model_key(record: pb.SequencedRecord | pb.AppendRecord) -> bytes:
    """A record, appended or read, as the model names it (history.py)."""
    if len(record.headers) == 1 and record.headers[0].name == b"":
        return command_key(record.headers[0].value, record.body)
    return record.body


async def operate(
    work: Workload,
    client: int,
    stream: str,
    call: Call,
    run: Callable[[], Awaitable[Outcome]],
) -> Outcome | None:
    """Run one call and record it; None if its outcome is unknown."""
    invoked = time.monotonic_ns()
    try:
        outcome = await asyncio.wait_for(run(), OPERATION_TIMEOUT_S)
    except (Unknown, TimeoutError):
        work.recorder.failed(client, stream, call, invoked)
        return None
    work.recorder.completed(client, stream, call, invoked, outcome)
    view = work.views[stream]
    view.next_seq = max(view.next_seq, _tail_seen(outcome))
    return outcome


def _tail_seen(outcome: Outcome) -> int:
    """A lower bound of the stream's tail that the outcome shows (0 if none)."""
    if isinstance(outcome, Acked):
        return outcome.end
    if isinstance(outcome, SeqNumMismatch):
        return outcome.expected
    if isinstance(outcome, Tail):
        return outcome.next_seq
    if isinstance(outcome, BeyondTail):
        return outcome.tail
    return 0


async def _grpc_append(stream: Stream, records: list[pb.AppendRecord], call: Append) -> Outcome:
    try:
        ack = await stream.append(records, call.match_seq_num, call.fencing_token)
    except SeqNumMismatchError as error:
        return SeqNumMismatch(error.expected_seq_num)
    except FencingTokenMismatchError as error:
        return FencingTokenMismatch(error.current_token)
    except S2SError as error:
        if error.code in NO_EFFECT_CODES:
            return NoEffect(error.code)
        raise Unknown from error
    except Exception as error:
        raise Unknown from error
    return Acked(ack.start.seq_num, ack.end.seq_num)


async def reconnect(work: Workload, check_tail: Callable[[], Awaitable[object]]) -> None:
    """After an unknown outcome, wait until a call on the client's channel succeeds again.

    A gRPC channel stays broken for a while after a restart, and an append it failed then is
    recorded as unknown until the next kill (nothing tells it never left the client); each
    such append widens the checker's search, so only one per kill is let through.
    """
    while not work.stop.is_set():
        await work.up.wait()
        try:
            await check_tail()
            return
        except Exception:
            await asyncio.sleep(0.05)


async def paced(work: Workload, rng: random.Random) -> bool:
    """Pause, wait for the server; False once the workload is over."""
    await asyncio.sleep(rng.uniform(0, PAUSE_MAX_S))
    await work.up.wait()
    return not work.stop.is_set()


async def unary_appender(work: Workload, client: int, stream_name: str, seed: int) -> None:
    rng = random.Random(seed)
    view = work.views[stream_name]
    async with S2SClient(work.grpc_target, retries=0) as grpc_client:
        stream = grpc_client.stream(BASIN, stream_name)
        while await paced(work, rng):
            roll = rng.random()
            new_token: str | None = None
            if roll < 0.05:
                new_token = f"t{work.body(client).decode()}"
                records = [fence_record(new_token)]
                call = Append((model_key(records[0]),), fencing_token=view.fencing_token)
            else:
                count = rng.randint(1, 4)
                records = [pb.AppendRecord(body=work.body(client)) for _ in range(count)]
                if roll < 0.12:
                    records.append(trim_record(max(0, view.next_seq - rng.randint(0, 20))))
                match = view.next_seq if roll > 0.7 else None
                call = Append(tuple(model_key(r) for r in records), match_seq_num=match)
            outcome = await operate(
                work, client, stream_name, call, partial(_grpc_append, stream, records, call)
            )
            if isinstance(outcome, Acked) and new_token is not None:
                view.fencing_token = new_token
            elif outcome is None:
                await reconnect(work, stream.check_tail)
            elif isinstance(outcome, FencingTokenMismatch):
                view.fencing_token = outcome.current


async def session_appender(work: Workload, client: int, stream_name: str, seed: int) -> None:
    """Pipelines of one to `SESSION_BATCHES_MAX` batches on an AppendSession; a new session
    after a failure."""
    rng = random.Random(seed)
    async with S2SClient(work.grpc_target, retries=0) as grpc_client:
        stream = grpc_client.stream(BASIN, stream_name)
        while await paced(work, rng):
            session = stream.append_session(inflight_batches_max=SESSION_BATCHES_MAX)
            invoked: list[tuple[Append, int, asyncio.Future[pb.AppendAck]]] = []

            async def pipeline(
                session: AppendSession = session,
                invoked: list[tuple[Append, int, asyncio.Future[pb.AppendAck]]] = invoked,
            ) -> None:
                for _ in range(rng.randint(1, SESSION_BATCHES_MAX)):
                    bodies = [work.body(client) for _ in range(rng.randint(1, 3))]
                    started = time.monotonic_ns()
                    invoked.append((Append(tuple(bodies)), started, await session.submit(bodies)))
                await session.close()

            with contextlib.suppress(Exception):  # each batch's future says what became of it
                await asyncio.wait_for(pipeline(), OPERATION_TIMEOUT_S)
            for _, _, future in invoked:  # the session's error: seen here, judged below
                if future.done() and not future.cancelled():
                    future.exception()
            if not record_session(work, client, stream_name, invoked, _grpc_session_failure):
                await reconnect(work, stream.check_tail)


def _grpc_session_failure(error: BaseException) -> Outcome | None:
    if isinstance(error, S2SError) and error.code in NO_EFFECT_CODES:
        return NoEffect(error.code)
    return None


def record_session(
    work: Workload,
    client: int,
    stream: str,
    batches: Sequence[tuple[Append, int, asyncio.Future[Any]]],
    failure: Callable[[BaseException], Outcome | None],
) -> bool:
    """Record the batches of one append session, in submission order; False if any outcome
    is unknown. A batch's future holds its ack (anything with `start.seq_num` and
    `end.seq_num`) or the session's error.

    Acks come in order and a session ends at its first failure, so the error belongs to the
    first batch without an ack; `failure` says what outcome that error defines (None: unknown).
    Behind a refusal (a 412) the session sequenced nothing, so those batches had no effect, as
    none had if the session was never sent.
    Behind a failed commit they are unknown (a failed commit fails what was submitted before
    the committer recovered, and the session may have sequenced one more batch after), but
    settled by the next ack (`Recorder.failed`): the server sent the error after its last
    submit.
    """
    # Completion times are when the session ended, not each ack's: later than the truth,
    # which only widens the window the checker allows, never narrows it.
    ended = answered = False
    behind: Outcome | None = None
    """What the batches behind the failed one had: no effect, or None: unknown."""
    known = True
    for call, invoked, future in batches:
        outcome: Outcome | None = None
        if not ended and future.done() and not future.cancelled() and future.exception() is None:
            ack = future.result()
            outcome = Acked(ack.start.seq_num, ack.end.seq_num)
        elif not ended:
            ended = True
            error = future.exception() if future.done() and not future.cancelled() else None
            outcome = None if error is None else failure(error)
            answered = outcome is not None
            if isinstance(outcome, (SeqNumMismatch, FencingTokenMismatch)):
                behind = NoEffect(BEHIND_REFUSED)
            elif outcome == NoEffect(NEVER_SENT):
                behind = outcome
        else:
            outcome = behind
        if outcome is None:
            work.recorder.failed(client, stream, call, invoked, settled_by_next_ack=answered)
            known = False
            continue
        work.recorder.completed(client, stream, call, invoked, outcome)
        view = work.views[stream]
        view.next_seq = max(view.next_seq, _tail_seen(outcome))
    return known


async def http_appender(work: Workload, client: int, stream_name: str, seed: int) -> None:
    """JSON appends over HTTP/1.1, a third of them conditional."""
    rng = random.Random(seed)
    view = work.views[stream_name]
    url = f"/v1/streams/{stream_name}/records"
    async with httpx.AsyncClient(
        base_url=work.http_url, headers={"s2-basin": BASIN}, timeout=OPERATION_TIMEOUT_S
    ) as http:

        async def send(call: Append) -> Outcome:
            payload: dict[str, object] = {"records": [{"body": b.decode()} for b in call.records]}
            if call.match_seq_num is not None:
                payload["match_seq_num"] = call.match_seq_num
            try:
                response = await http.post(url, json=payload)
            except httpx.HTTPError as error:
                raise Unknown from error
            if response.status_code == 200:
                ack = response.json()
                return Acked(ack["start"]["seq_num"], ack["end"]["seq_num"])
            if response.status_code == 412 and "seq_num_mismatch" in response.json():
                return SeqNumMismatch(response.json()["seq_num_mismatch"])
            code = response.json().get("code")
            if response.status_code in (409, 500) and code in NO_EFFECT_CODES:
                return NoEffect(code)
            raise Unknown(f"{response.status_code}: {response.text}")

        while await paced(work, rng):
            bodies = tuple(work.body(client) for _ in range(rng.randint(1, 3)))
            match = view.next_seq if rng.random() < 0.35 else None
            append = Append(bodies, match_seq_num=match)
            await operate(work, client, stream_name, append, partial(send, append))


async def tail_outcome(check_tail: Callable[[], Awaitable[Any]]) -> Outcome:
    """A check-tail's outcome, through either client library (both answer a position with
    its `seq_num`)."""
    try:
        return Tail((await check_tail()).seq_num)
    except Exception as error:
        raise Unknown from error


def read_near_tail(view: StreamView, rng: random.Random) -> Read:
    """A read starting up to 12 records before the tail the client last saw, or just past it."""
    start = max(0, view.next_seq - rng.randint(-1, 12))
    return Read(start, rng.randint(1, 16))


async def reader(work: Workload, client: int, stream_name: str, seed: int) -> None:
    """Reads near the tail (sometimes just beyond it) and check-tails, alternately."""
    rng = random.Random(seed)
    view = work.views[stream_name]
    async with S2SClient(work.grpc_target) as grpc_client:
        stream = grpc_client.stream(BASIN, stream_name)

        async def read(call: Read) -> Outcome:
            try:
                batch = await stream.read(seq_num=call.start_seq, count=call.count)
            except ReadUnwrittenError as error:
                return BeyondTail(error.tail.seq_num)
            except Exception as error:
                raise Unknown from error
            return Records(tuple((r.seq_num, model_key(r)) for r in batch.records))

        while await paced(work, rng):
            if rng.random() < 0.5:
                check = partial(tail_outcome, stream.check_tail)
                await operate(work, client, stream_name, CheckTail(), check)
                continue
            ranged = read_near_tail(view, rng)
            await operate(work, client, stream_name, ranged, partial(read, ranged))
