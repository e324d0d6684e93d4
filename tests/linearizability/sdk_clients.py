"""Clients of the workload that use the official Python SDK (`s2-sdk`) over HTTP/2, as S2's
own users do: an appender on its append session (S2S framing), some of whose pipelines chain
`match_seq_num` from batch to batch, and a reader of unary reads, read sessions (S2S framing)
and check-tails.

The SDK runs without retries, so each outcome is the answer to one attempt: acks and 412s
and reads as the contract defines them, `storage` as no effect (ADR 0010), anything else
unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import timedelta
from functools import partial

from s2_sdk import (
    S2,
    AppendAck,
    AppendInput,
    BatchSubmitTicket,
    Endpoints,
    FencingTokenMismatchError,
    ReadLimit,
    ReadUnwrittenError,
    Record,
    Retry,
    S2ServerError,
    S2Stream,
    SeqNum,
    SeqNumMismatchError,
    SequencedRecord,
    Timeout,
)
from s2_sdk._exceptions import ConnectError

from tests.linearizability.clients import (
    BASIN,
    NO_EFFECT_CODES,
    OPERATION_TIMEOUT_S,
    SESSION_BATCHES_MAX,
    Unknown,
    Workload,
    operate,
    paced,
    read_near_tail,
    reconnect,
    record_session,
    tail_outcome,
)
from tests.linearizability.history import (
    NEVER_SENT,
    Append,
    BeyondTail,
    CheckTail,
    FencingTokenMismatch,
    NoEffect,
    Outcome,
    Read,
    Records,
    SeqNumMismatch,
    command_key,
)


def _sdk(work: Workload) -> S2:
    """The SDK in direct mode against our server, one attempt per call."""
    endpoints = Endpoints(account=work.http_url, basin=work.http_url)
    timeout = Timeout(request=timedelta(seconds=OPERATION_TIMEOUT_S))
    sdk: S2 = S2("unused-token", endpoints=endpoints, timeout=timeout, retry=Retry(max_attempts=1))
    return sdk


def _failure(error: BaseException) -> Outcome | None:
    """The outcome an SDK error defines; None: unknown."""
    if _never_sent(error):
        return NoEffect(NEVER_SENT)
    if isinstance(error, SeqNumMismatchError):
        return SeqNumMismatch(error.expected_seq_num)
    if isinstance(error, FencingTokenMismatchError):
        return FencingTokenMismatch(error.expected_fencing_token)
    if isinstance(error, S2ServerError) and error.code in NO_EFFECT_CODES:
        return NoEffect(error.code)
    return None


def _never_sent(error: BaseException) -> bool:
    """Whether the SDK failed while getting a connection, before any request stream existed.

    The pinned SDK (0.13.0) raises its (unexported) `ConnectError` only there: the TCP
    connect failing or timing out, or the new connection dying before its first SETTINGS
    frame (as one does when it reaches a process being killed). A session that failed so
    never reached a server, whichever process was up when the failure was seen.
    """
    seen: set[int] = set()  # a chain may loop back on itself
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ConnectError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _model_key(record: SequencedRecord) -> bytes:
    """A record read through the SDK as the model names it (clients.model_key)."""
    if len(record.headers) == 1 and record.headers[0][0] == b"":
        return command_key(record.headers[0][1], record.body)
    return record.body


async def sdk_session_appender(work: Workload, client: int, stream_name: str, seed: int) -> None:
    """Pipelines of one to `SESSION_BATCHES_MAX` batches on an S2S append session; in a third
    of them every batch carries `match_seq_num`, chained from the stream's last seen tail
    through the batches before it (what pipelined conditional appends are for)."""
    rng = random.Random(seed)
    view = work.views[stream_name]
    while not work.stop.is_set():
        # A fresh client after each unknown outcome: the old one's pooled HTTP/2 connection
        # may lead to a killed process, and a session started on it after the restart fails
        # with every batch it queued unknown until the next kill (ADR 0010, decision 6).
        async with _sdk(work) as sdk:
            stream = sdk.basin(BASIN).stream(stream_name)
            await reconnect(work, stream.check_tail)
            while await paced(work, rng):
                if not await _session(work, client, stream, rng, view.next_seq):
                    break


async def _session(
    work: Workload, client: int, stream: S2Stream, rng: random.Random, tail_seen: int
) -> bool:
    """One session of one to `SESSION_BATCHES_MAX` batches; False if an outcome was unknown."""
    session = stream.append_session(max_unacked_batches=SESSION_BATCHES_MAX)
    batches: list[tuple[Append, int, asyncio.Future[AppendAck]]] = []
    match = tail_seen if rng.random() < 0.35 else None

    async def pipeline(match: int | None) -> None:
        for _ in range(rng.randint(1, SESSION_BATCHES_MAX)):
            bodies = tuple(work.body(client) for _ in range(rng.randint(1, 3)))
            records = [Record(body=body) for body in bodies]
            started = time.monotonic_ns()
            ticket = await session.submit(AppendInput(records, match_seq_num=match))
            # The ticket only wraps the future; the future is what says whether it is done,
            # without awaiting it.
            future = asyncio.ensure_future(_awaited(ticket))
            batches.append((Append(bodies, match_seq_num=match), started, future))
            if match is not None:
                match += len(bodies)
        await session.close()

    with contextlib.suppress(Exception):  # each batch's future says what became of it
        await asyncio.wait_for(pipeline(match), OPERATION_TIMEOUT_S)
    futures = [future for _, _, future in batches]
    if futures:  # a dead server fails them all; a hung one leaves them unknown
        _, hung = await asyncio.wait(futures, timeout=OPERATION_TIMEOUT_S)
        for future in hung:
            future.cancel()
        for future in futures:  # the session's error: seen here, judged below
            if not future.cancelled():
                future.exception()
    return record_session(work, client, stream.name, batches, _failure)


async def _awaited(ticket: BatchSubmitTicket) -> AppendAck:
    ack: AppendAck = await ticket
    return ack


async def _read_session(work: Workload, client: int, stream: S2Stream, call: Read) -> None:
    """A read session of `call.count` records that ends once caught up (`wait=0`), each of its
    batches recorded as a read of its own: the server reads each from storage at one moment,
    from where the one before ended, with the count still left. That moment is after the
    session was opened and before the batch arrived, which are the times recorded (the
    server may read a batch before the client received the one before it)."""
    invoked = time.monotonic_ns()
    start, count = call.start_seq, call.count
    try:
        async with asyncio.timeout(OPERATION_TIMEOUT_S):
            limit = ReadLimit(count=count)
            async with stream.read_session(start=SeqNum(start), limit=limit, wait=0) as session:
                async for batch in session:
                    if not batch.records:
                        continue
                    got = Records(tuple((r.seq_num, _model_key(r)) for r in batch.records))
                    work.recorder.completed(client, stream.name, Read(start, count), invoked, got)
                    start, count = got.records[-1][0] + 1, count - len(got.records)
    except ReadUnwrittenError as error:
        outcome = BeyondTail(error.tail.seq_num)
        work.recorder.completed(client, stream.name, Read(start, count), invoked, outcome)
    except Exception:
        pass  # an unknown read observed nothing: nothing to record


async def sdk_reader(work: Workload, client: int, stream_name: str, seed: int) -> None:
    """Unary reads and read sessions near the tail (sometimes just beyond it), and
    check-tails."""
    rng = random.Random(seed)
    view = work.views[stream_name]
    async with _sdk(work) as sdk:
        stream = sdk.basin(BASIN).stream(stream_name)

        async def read(call: Read) -> Outcome:
            try:
                batch = await stream.read(
                    start=SeqNum(call.start_seq), limit=ReadLimit(count=call.count)
                )
            except ReadUnwrittenError as error:
                return BeyondTail(error.tail.seq_num)
            except Exception as error:
                raise Unknown from error
            return Records(tuple((r.seq_num, _model_key(r)) for r in batch.records))

        while await paced(work, rng):
            roll = rng.random()
            if roll < 0.4:
                check = partial(tail_outcome, stream.check_tail)
                await operate(work, client, stream_name, CheckTail(), check)
                continue
            ranged = read_near_tail(view, rng)
            if roll < 0.7:
                await operate(work, client, stream_name, ranged, partial(read, ranged))
            else:
                await _read_session(work, client, stream, ranged)
