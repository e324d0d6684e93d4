"""The `s2s` command line: `s2s serve` runs the server until SIGTERM or SIGINT; the other
commands (server/cli_client.py) talk to a running server."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from server import allocator
from server.cli_client import SERVER_DEFAULT, add_commands, run
from server.grpc_frontend.server import start_grpc_server
from server.http_frontend import start_http_server
from server.lake.connection import LakeSettings, default_threads
from server.lake.service import Lake
from server.storage.kv import MAP_SIZE_BYTES_DEFAULT
from server.streamstore import StreamStore

log = logging.getLogger("s2s")


MAX_STORAGE_GIB_DEFAULT = MAP_SIZE_BYTES_DEFAULT >> 30


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2s", description="s2s: durable streams server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument(
        "--data-dir",
        default=_env("S2S_DATA_DIR", "./data"),
        help="where streams are stored (env S2S_DATA_DIR, default ./data)",
    )
    serve.add_argument(
        "--host",
        default=_env("S2S_HOST", "127.0.0.1"),
        help="address to listen on (env S2S_HOST, default 127.0.0.1)",
    )
    serve.add_argument(
        "--grpc-port",
        type=int,
        default=int(_env("S2S_GRPC_PORT", "50051")),
        help="gRPC port, 0 for any free port (env S2S_GRPC_PORT, default 50051)",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        default=int(_env("S2S_HTTP_PORT", "8080")),
        help="HTTP port (S2 v1 REST API), 0 for any free port (env S2S_HTTP_PORT, default 8080)",
    )
    serve.add_argument(
        "--max-storage-gib",
        type=int,
        default=int(_env("S2S_MAX_STORAGE_GIB", str(MAX_STORAGE_GIB_DEFAULT))),
        help="most the stream log may take on disk; past it appends fail as full until data "
        "is trimmed or the server restarts with more (env S2S_MAX_STORAGE_GIB, "
        f"default {MAX_STORAGE_GIB_DEFAULT})",
    )
    serve.add_argument(
        "--lake-catalog",
        default=os.environ.get("S2S_LAKE_CATALOG"),
        help="DuckLake catalog connection string, e.g. 'postgres:dbname=lake host=db' "
        "(env S2S_LAKE_CATALOG; default: embedded, DATA_DIR/lake/catalog.ducklake)",
    )
    serve.add_argument(
        "--lake-data-path",
        default=os.environ.get("S2S_LAKE_DATA_PATH"),
        help="where the lake's Parquet files go; set it with a shared catalog "
        "(env S2S_LAKE_DATA_PATH; default DATA_DIR/lake/data)",
    )
    serve.add_argument(
        "--lake-linger-ms",
        type=int,
        default=int(_env("S2S_LAKE_LINGER_MS", "500")),
        help="how long a materialization gathers records before a commit "
        "(env S2S_LAKE_LINGER_MS, default 500)",
    )
    serve.add_argument(
        "--lake-batch-rows",
        type=int,
        default=int(_env("S2S_LAKE_BATCH_ROWS", "100000")),
        help="most records a materialization applies in one commit "
        "(env S2S_LAKE_BATCH_ROWS, default 100000)",
    )
    serve.add_argument(
        "--lake-threads",
        type=int,
        default=int(_env("S2S_LAKE_THREADS", str(default_threads()))),
        help="how many cores one lake statement may use "
        "(env S2S_LAKE_THREADS, default half the cores, at least 1)",
    )
    serve.add_argument(
        "--lake-maintenance-interval-s",
        type=float,
        default=float(_env("S2S_LAKE_MAINTENANCE_INTERVAL_S", "600")),
        help="how often the lake merges small files and expires snapshots older than a day, "
        "0 never (env S2S_LAKE_MAINTENANCE_INTERVAL_S, default 600)",
    )
    add_commands(commands, _env("S2S_SERVER", SERVER_DEFAULT))
    return parser


GIL_SWITCH_INTERVAL_S = 0.0005
"""The event loop and the committer's writer thread share the GIL. CPython's default 5 ms
switch interval makes each hand-off between them wait up to 5 ms; 0.5 ms cut unary append p99
at 1,000/s from ~100 ms to ~20 ms and raised session throughput ~20% (bench/grpc_append.py)."""

SHUTDOWN_GRACE_S = 5.0
"""How long in-flight calls get to finish on SIGTERM before they are cancelled."""


def lake_settings(args: argparse.Namespace) -> LakeSettings:
    if args.lake_catalog and not args.lake_data_path:
        raise SystemExit("--lake-catalog needs --lake-data-path: where the Parquet files go")
    if args.lake_threads < 1:
        raise SystemExit("--lake-threads must be at least 1")
    return LakeSettings(
        root=Path(args.data_dir) / "lake",
        catalog=args.lake_catalog,
        data_path=args.lake_data_path,
        linger_s=args.lake_linger_ms / 1000,
        batch_rows_max=args.lake_batch_rows,
        threads=args.lake_threads,
        maintenance_interval_s=args.lake_maintenance_interval_s,
    )


async def serve(
    data_dir: str,
    host: str,
    grpc_port: int,
    http_port: int,
    lake_config: LakeSettings,
    max_storage_gib: int = MAX_STORAGE_GIB_DEFAULT,
) -> None:
    """Run the server until SIGTERM or SIGINT, then stop without losing acknowledged data."""
    store = await StreamStore.open(data_dir, max_storage_bytes=max_storage_gib << 30)
    log.info("storage open at %s", os.path.abspath(data_dir))
    lake = await Lake.open(store, lake_config)
    log.info("lake open: catalog %s, data %s", lake_config.catalog_uri, lake_config.data_dir)
    grpc_server, bound = await start_grpc_server(store, host, grpc_port, lake)
    log.info("gRPC listening on %s:%d", host, bound)
    stop = asyncio.Event()
    http_task, http_bound = await start_http_server(
        store, host, http_port, stop, SHUTDOWN_GRACE_S, lake
    )
    log.info("HTTP listening on %s:%d", host, http_bound)
    # Everything loaded so far (modules, DuckDB, protobuf descriptors) lives as long as the
    # process: out of the collector's reach, a full collection no longer walks it. Each one
    # took 13-28 ms before, a stall of every request in flight (bench/http_append.py p99).
    gc.freeze()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining calls, then finishing queued commits")
        stop.set()
        # A frontend that fails while stopping must not keep the store from closing cleanly.
        results = await asyncio.gather(
            grpc_server.stop(SHUTDOWN_GRACE_S), http_task, return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.error("frontend failed while stopping", exc_info=result)
        await lake.close()
        await store.close()
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        return run(args)
    if args.max_storage_gib < 1:
        raise SystemExit("--max-storage-gib must be at least 1")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if not allocator.tune():
        log.info("not glibc: allocator settings left as they are")
    asyncio.run(
        serve(
            args.data_dir,
            args.host,
            args.grpc_port,
            args.http_port,
            lake_settings(args),
            args.max_storage_gib,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
