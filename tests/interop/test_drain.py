"""Shutdown while sessions are open: they end with `503 server_draining` at once instead of
holding the server for its grace period, and the server exits cleanly (contract 9, 12)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path

import httpx
from s2_sdk import AppendInput, Record, S2ClientError, SeqNum

from tests.interop.conftest import sdk_client
from tests.server_process import ServerProcess

STOP_PROMPT_S = 3.0
"""Well under the server's 5 s grace period: open sessions must not hold shutdown up."""


async def test_open_sessions_end_with_server_draining(tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "data")).start()
    try:
        async with sdk_client(server) as sdk:
            await sdk.create_basin("drain-basin")
            await sdk.basin("drain-basin").create_stream("s")
            stream = sdk.basin("drain-basin").stream("s")
            session = stream.append_session()
            await session.__aenter__()
            ack = await (await session.submit(AppendInput(records=[Record(body=b"x")])))
            assert ack.end.seq_num == 1

            frames: list[bytes] = []
            following = threading.Event()

            def follow_raw() -> None:
                headers = {"s2-basin": "drain-basin", "content-type": "s2s/proto"}
                with (
                    httpx.Client(http1=False, http2=True, timeout=10) as client,
                    client.stream(
                        "GET", f"{server.http_url}/v1/streams/s/records?seq_num=1", headers=headers
                    ) as response,
                ):
                    following.set()
                    frames.append(response.read())

            reader = threading.Thread(target=follow_raw)
            reader.start()
            assert await asyncio.to_thread(following.wait, 5)
            started = time.monotonic()
            assert await asyncio.to_thread(server.stop) == 0
            assert time.monotonic() - started < STOP_PROMPT_S
            await asyncio.to_thread(reader.join, 5)
            with_terminal = frames[0]
            # The follower got its heartbeat, then the terminal frame: flags 0x80, status 503.
            length = int.from_bytes(with_terminal[:3], "big")
            terminal = with_terminal[3 + length :]
            assert terminal[3] == 0x80
            assert int.from_bytes(terminal[4:6], "big") == 503
            assert json.loads(terminal[6:])["code"] == "server_draining"
            # Told to reconnect, the SDK session retries while the server is down: whether a
            # retry lands after the restart below is timing, so its outcome is not asserted.
            with contextlib.suppress(S2ClientError):
                await session.close()
            await asyncio.to_thread(server.start)
            assert (await stream.read(start=SeqNum(0))).records[0].body == b"x"
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()
