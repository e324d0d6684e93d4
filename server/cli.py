"""The `s2s` command line: `s2s serve` runs the server until SIGTERM or SIGINT; `s2s migrate`
copies a stopped server's LMDB stream log into PostgreSQL (server/migrate.py); the other
commands (client/cli.py) talk to a running server. This module is where the two halves meet:
the rest of `server/` never imports `client/`.

Exit status: 0 done; 1 failed, with one line on stderr saying why and what to do; 2 a usage
error (a bad flag, argument or S2S_* variable: one line, argparse's convention); 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argcomplete
import duckdb
import lmdb
from grpc import aio

from client.cli import add_commands, run
from client.cli_args import (
    EnvOption,
    Parser,
    boolean,
    log_options,
    nonempty,
    number,
    port,
    whole_number,
)
from s2s import allocator
from s2s.logs import configure_server
from server.access.tokens import ROOT_TOKEN_FILE
from server.binding import IPAddress, host_port, listening_socket, parse_host
from server.grpc_frontend.server import listening_grpc_server, start_grpc_server
from server.http_frontend import start_http_server
from server.http_frontend.cors import parse_origins
from server.jobs import PRODUCER_EXPIRY_S_DEFAULT, JobSettings
from server.kv_store.compaction import CompactionSettings, KvCompactor
from server.lake.connection import (
    LAKE_MEMORY_LIMIT_MIB_DEFAULT,
    LAKE_MEMORY_LIMIT_MIB_MIN,
    LAKE_REOPEN_COMMITS_DEFAULT,
    LakeSettings,
    default_threads,
)
from server.lake.service import Lake
from server.migrate import TRANSACTION_MIB_DEFAULT, migrate
from server.startup import StartupError, claim_data_dir
from server.storage.choice import (
    LMDB,
    POSTGRES_PREFIX,
    describe_storage,
    postgres_option,
    storage_option,
)
from server.storage.kv import MAP_SIZE_BYTES_DEFAULT
from server.streamstore import StreamStore
from server.tls import TlsSettings, server_tls
from server.usage.accounting import UsageSettings

log = logging.getLogger("s2s")


def host(text: str) -> IPAddress:
    """`--host`'s argument type (server.binding says which forms are accepted)."""
    try:
        return parse_host(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cors_origins(text: str) -> frozenset[str]:
    """`--cors-origins`'s argument type (server.http_frontend.cors says which forms)."""
    try:
        return parse_origins(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


MAX_STORAGE_GIB_DEFAULT = MAP_SIZE_BYTES_DEFAULT >> 30
MAX_STORAGE_GIB_MAX = 1 << 20
"""1 PiB. LMDB maps the whole limit at once, so what a machine accepts is bounded by its
address space (128 TiB on x86-64 Linux); a larger value fails at start, saying so."""
LAKE_THREADS_MAX = 1024
METRICS_BASIN_LABELS_MAX = 100_000
METRICS_FLUSH_INTERVAL_S_MAX = 3600
LAKE_LINGER_MS_MAX = 3_600_000
PRODUCER_EXPIRY_HOURS_MAX = 10 * 365 * 24

SERVE_OPTIONS = (
    EnvOption("--data-dir", "S2S_DATA_DIR", nonempty, "./data", "where streams are stored"),
    EnvOption(
        "--host",
        "S2S_HOST",
        host,
        parse_host("127.0.0.1"),
        "IP address both ports listen on: 0.0.0.0 is every IPv4 address, :: every IPv6 and "
        "IPv4 address; IPv6 bare or in brackets (::1, [::1])",
    ),
    EnvOption("--grpc-port", "S2S_GRPC_PORT", port, 50051, "gRPC port, 0 for any free port"),
    EnvOption(
        "--http-port",
        "S2S_HTTP_PORT",
        port,
        8080,
        "HTTP port (S2 v1 REST API), 0 for any free port",
    ),
    EnvOption(
        "--storage",
        "S2S_STORAGE",
        storage_option,
        LMDB,
        "where the stream log lives: 'lmdb' (in --data-dir) or 'postgres:' and a libpq "
        "connection string, e.g. 'postgres:host=db1 dbname=s2s'",
    ),
    EnvOption(
        "--shared-storage",
        "S2S_SHARED_STORAGE",
        boolean,
        False,
        "several s2s servers (nodes) serve the --storage postgres: database, each any basin "
        "and stream; every one of them needs this (without it a server writes the database "
        "alone and refuses to start beside another)",
        switch=True,
    ),
    EnvOption(
        "--max-storage-gib",
        "S2S_MAX_STORAGE_GIB",
        whole_number(1, MAX_STORAGE_GIB_MAX),
        MAX_STORAGE_GIB_DEFAULT,
        "most the stream log may take on disk; past it appends fail as full until data is "
        "trimmed or the server restarts with more",
    ),
    EnvOption(
        "--producer-expiry-hours",
        "S2S_PRODUCER_EXPIRY_HOURS",
        whole_number(1, PRODUCER_EXPIRY_HOURS_MAX),
        int(PRODUCER_EXPIRY_S_DEFAULT // 3600),
        "how long the server remembers an idempotent producer (s2s-producer header) after its "
        "last batch to a stream: its retries are answered with their first ack for that long",
    ),
    EnvOption(
        "--lake-catalog",
        "S2S_LAKE_CATALOG",
        nonempty,
        None,
        "DuckLake catalog connection string, e.g. 'postgres:dbname=lake host=db'; none: "
        "embedded, DATA_DIR/lake/catalog.ducklake",
    ),
    EnvOption(
        "--lake-data-path",
        "S2S_LAKE_DATA_PATH",
        nonempty,
        None,
        "where the lake's Parquet files go; set it with a shared catalog; none: DATA_DIR/lake/data",
    ),
    EnvOption(
        "--lake-linger-ms",
        "S2S_LAKE_LINGER_MS",
        whole_number(0, LAKE_LINGER_MS_MAX),
        500,
        "how long a materialization gathers records before a commit",
    ),
    EnvOption(
        "--lake-batch-rows",
        "S2S_LAKE_BATCH_ROWS",
        whole_number(1, 10**9),
        100_000,
        "most records a materialization applies in one commit",
    ),
    EnvOption(
        "--lake-threads",
        "S2S_LAKE_THREADS",
        whole_number(1, LAKE_THREADS_MAX),
        default_threads(),
        "how many cores one lake statement may use; the default is half this machine's",
    ),
    EnvOption(
        "--lake-memory-limit-mib",
        "S2S_LAKE_MEMORY_LIMIT_MIB",
        whole_number(LAKE_MEMORY_LIMIT_MIB_MIN, 2**30),
        LAKE_MEMORY_LIMIT_MIB_DEFAULT,
        "memory DuckDB may hold for the lake (caches, sorts, joins) before it drops caches "
        "and spills to DATA_DIR/lake/tmp",
    ),
    EnvOption(
        "--lake-maintenance-interval-s",
        "S2S_LAKE_MAINTENANCE_INTERVAL_S",
        number(0),
        600.0,
        "how often the lake merges small files and expires snapshots older than a day, 0 never",
    ),
    EnvOption(
        "--lake-reopen-commits",
        "S2S_LAKE_REOPEN_COMMITS",
        whole_number(0, 10**9),
        LAKE_REOPEN_COMMITS_DEFAULT,
        "reopen the lake's DuckDB after this many commits, returning the memory DuckLake keeps "
        "per commit (the lake pauses for a fraction of a second); 0 never",
    ),
    EnvOption(
        "--tls-cert",
        "S2S_TLS_CERT",
        nonempty,
        None,
        "PEM certificate (chain) both ports serve TLS with, only TLS; needs --tls-key",
    ),
    EnvOption("--tls-key", "S2S_TLS_KEY", nonempty, None, "--tls-cert's unencrypted PEM key"),
    EnvOption(
        "--tls-self-signed",
        "S2S_TLS_SELF_SIGNED",
        boolean,
        False,
        "TLS on both ports with a self-signed certificate for localhost, kept in "
        "DATA_DIR/tls (for development; clients must trust DATA_DIR/tls/cert.pem)",
        switch=True,
    ),
    EnvOption(
        "--cors-origins",
        "S2S_CORS_ORIGINS",
        cors_origins,
        None,
        "browser origins allowed to call the HTTP API (CORS), comma-separated "
        "scheme://host[:port], or * for any",
    ),
    EnvOption(
        "--no-auth",
        "S2S_NO_AUTH",
        boolean,
        False,
        "serve every call without an access token, with every permission: only for "
        "throwaway local use (by default calls need `authorization: Bearer <token>`)",
        switch=True,
    ),
    EnvOption(
        "--open-metrics",
        "S2S_OPEN_METRICS",
        boolean,
        False,
        "serve GET /metrics without a token to clients on this machine (loopback addresses), "
        "for a local Prometheus; elsewhere it needs a token with account-metrics",
        switch=True,
    ),
    EnvOption(
        "--metrics-basin-labels",
        "S2S_METRICS_BASIN_LABELS",
        whole_number(0, METRICS_BASIN_LABELS_MAX),
        UsageSettings.basin_labels_max,
        "basins with their own `basin` label in /metrics, the first seen; the others are "
        'summed under basin="_other"',
    ),
    EnvOption(
        "--kv-compaction-interval-s",
        "S2S_KV_COMPACTION_INTERVAL_S",
        number(0),
        CompactionSettings.interval_s,
        "how often key-value stores are checked for compaction (their streams rewritten to a "
        "snapshot of the live entries, the rest trimmed); 0 never",
    ),
    EnvOption(
        "--kv-compaction-min-bytes",
        "S2S_KV_COMPACTION_MIN_BYTES",
        whole_number(0, 2**63 - 1),
        CompactionSettings.min_bytes,
        "least a key-value store's compaction must drop (metered bytes); it also waits until "
        "the store's stream holds twice its live entries",
    ),
    EnvOption(
        "--kv-compaction-write-mib-per-s",
        "S2S_KV_COMPACTION_WRITE_MIB_PER_S",
        number(0),
        CompactionSettings.write_bytes_per_s / 2**20,
        "how fast a key-value store's compaction writes its snapshot, at most, beside "
        "clients' appends; 0 no limit",
    ),
    EnvOption(
        "--metrics-flush-interval-s",
        "S2S_METRICS_FLUSH_INTERVAL_S",
        number(0.1),
        UsageSettings.flush_interval_s,
        "how often the metrics API's counts are written to disk: a kill -9 loses at most "
        "this long of them (a graceful stop none)",
    ),
    *log_options("info"),
)


def version() -> str:
    """This installation's version, from its package metadata."""
    try:
        return importlib.metadata.version("s2s")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> Parser:
    parser = Parser(prog="s2s", description="s2s: durable streams server")
    parser.add_argument(
        "--version", action="version", version=f"s2s {version()}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="run the server")
    for option in SERVE_OPTIONS:
        option.add_to(serve_parser)
    serve_parser.set_defaults(parser=serve_parser)
    _add_migrate(commands)
    add_commands(commands)
    return parser


def _add_migrate(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "migrate",
        help="copy a stopped server's LMDB data directory into an empty PostgreSQL database",
        description="Copy every key space of a stopped server's stream log (DATA_DIR/log) into "
        "an empty PostgreSQL database, then compare both, key space by key space (count and "
        "SHA-256). Exit 0 if all match; 1 on a failure or a mismatch; 2 if refused (nothing "
        "written). See docs/deploy.md.",
    )
    parser.add_argument(
        "--from",
        dest="source",
        metavar="DATA_DIR",
        type=nonempty,
        required=True,
        help="the data directory of a stopped server that ran with --storage lmdb (the default)",
    )
    parser.add_argument(
        "--to",
        dest="target",
        metavar="'postgres:CONNINFO'",
        type=postgres_option,
        required=True,
        help="the empty database, as --storage names it: 'postgres:' and a libpq connection "
        "string, e.g. 'postgres:host=db1 dbname=s2s'",
    )
    parser.add_argument(
        "--transaction-mib",
        metavar="MIB",
        type=whole_number(1, 1024),
        default=TRANSACTION_MIB_DEFAULT,
        help="most each PostgreSQL transaction of the copy writes (a larger single value goes "
        f"alone); default {TRANSACTION_MIB_DEFAULT}",
    )


GIL_SWITCH_INTERVAL_S = 0.0005
"""The event loop and the committer's writer thread share the GIL. CPython's default 5 ms
switch interval makes each hand-off between them wait up to 5 ms; 0.5 ms cut unary append p99
at 1,000/s from ~100 ms to ~20 ms and raised session throughput ~20% (bench/grpc_append.py)."""

SHUTDOWN_GRACE_S = 5.0
"""How long in-flight calls get to finish on SIGTERM before they are cancelled."""


@dataclass(frozen=True)
class ServeSettings:
    data_dir: str
    host: IPAddress
    grpc_port: int
    http_port: int
    max_storage_gib: int
    storage: str
    shared_storage: bool
    jobs: JobSettings
    lake: LakeSettings
    tls: TlsSettings
    cors_origins: frozenset[str] | None
    auth: bool
    open_metrics: bool
    usage: UsageSettings
    kv_compaction: CompactionSettings


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    """The settings of `s2s serve`: flags, else S2S_* variables, else defaults; a bad value
    exits as a usage error."""
    parser: Parser = args.parser
    for option in SERVE_OPTIONS:
        option.resolve(parser, args)
    if args.lake_catalog and not args.lake_data_path:
        parser.error("--lake-catalog needs --lake-data-path: where the Parquet files go")
    if args.shared_storage and not args.storage.startswith(POSTGRES_PREFIX):
        parser.error("--shared-storage needs --storage postgres:...: only a database is shared")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together: give both")
    if args.tls_self_signed and args.tls_cert is not None:
        parser.error("--tls-self-signed and --tls-cert exclude each other: give one")
    if args.metrics_flush_interval_s > METRICS_FLUSH_INTERVAL_S_MAX:
        parser.error(
            f"--metrics-flush-interval-s must be at most {METRICS_FLUSH_INTERVAL_S_MAX} "
            "(the hourly storage samples need a flush each hour)"
        )
    return ServeSettings(
        data_dir=args.data_dir,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        max_storage_gib=args.max_storage_gib,
        storage=args.storage,
        shared_storage=args.shared_storage,
        jobs=JobSettings(producer_expiry_s=args.producer_expiry_hours * 3600.0),
        lake=LakeSettings(
            root=Path(args.data_dir) / "lake",
            catalog=args.lake_catalog,
            data_path=args.lake_data_path,
            linger_s=args.lake_linger_ms / 1000,
            batch_rows_max=args.lake_batch_rows,
            threads=args.lake_threads,
            memory_limit_mib=args.lake_memory_limit_mib,
            maintenance_interval_s=args.lake_maintenance_interval_s,
            reopen_after_commits=args.lake_reopen_commits,
        ),
        tls=TlsSettings(args.tls_cert, args.tls_key, args.tls_self_signed),
        cors_origins=args.cors_origins,
        auth=not args.no_auth,
        open_metrics=args.open_metrics,
        usage=UsageSettings(args.metrics_basin_labels, args.metrics_flush_interval_s),
        kv_compaction=CompactionSettings(
            interval_s=args.kv_compaction_interval_s,
            min_bytes=args.kv_compaction_min_bytes,
            write_bytes_per_s=args.kv_compaction_write_mib_per_s * 2**20,
        ),
    )


async def serve(settings: ServeSettings) -> None:
    """Run the server until SIGTERM or SIGINT, then stop without losing acknowledged data.

    Raises StartupError, having released what it took, if the server cannot start.
    """
    # Callbacks run in reverse: frontends stop first, then the lake, the store, the ports.
    async with contextlib.AsyncExitStack() as resources:
        resources.enter_context(claim_data_dir(settings.data_dir))
        tls = server_tls(settings.tls, settings.data_dir, settings.host)
        # Both ports before the store and the lake: a port in use or a wrong address fails in
        # milliseconds, not after the seconds they take to open.
        grpc_server, grpc_port = listening_grpc_server(settings.host, settings.grpc_port, tls)
        resources.push_async_callback(grpc_server.stop, None)
        http_socket = resources.enter_context(
            listening_socket(settings.host, settings.http_port, "--http-port")
        )
        http_port: int = http_socket.getsockname()[1]
        store = await _open_store(settings)
        resources.push_async_callback(store.close)
        await _set_up_access(store, settings)
        lake = await _open_lake(store, settings.lake)
        resources.push_async_callback(lake.close)
        compactor = KvCompactor(store, settings.kv_compaction)
        compactor.start()
        resources.push_async_callback(compactor.stop)

        stop = asyncio.Event()  # set on SIGTERM or SIGINT
        await start_grpc_server(grpc_server, store, lake)
        over = " over TLS" if tls else ""
        log.info("gRPC listening on %s%s", host_port(settings.host, grpc_port), over)
        http_task = start_http_server(
            store,
            http_socket,
            stop,
            SHUTDOWN_GRACE_S,
            lake,
            tls=tls,
            cors_origins=settings.cors_origins,
            open_metrics=settings.open_metrics,
        )
        resources.push_async_callback(_stop_frontends, store, lake, grpc_server, http_task, stop)
        log.info("HTTP listening on %s%s", host_port(settings.host, http_port), over)
        # Everything loaded so far (modules, DuckDB, protobuf descriptors) lives as long as the
        # process: out of the collector's reach, a full collection no longer walks it. Each one
        # took 13-28 ms before, a stall of every request in flight (bench/http_append.py p99).
        gc.freeze()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_report_loop_exception)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    log.info("stopped")


async def _set_up_access(store: StreamStore, settings: ServeSettings) -> None:
    """Access tokens on (the root token's file made if needed), or off with a warning."""
    if not settings.auth:
        store.access_tokens.required = False
        log.warning(
            "--no-auth: every call is served with every permission, token or not; "
            "use this only on a machine nobody else can reach"
        )
        return
    path = await store.access_tokens.bootstrap_root(settings.data_dir, settings.shared_storage)
    if path is None:
        log.warning(
            "root access token: made by another node, whose DATA_DIR/%s holds it; copy that "
            "file into this node's --data-dir to use it from here",
            ROOT_TOKEN_FILE,
        )
        return
    log.info("root access token: in %s (readable only by this user)", path)


async def _open_store(settings: ServeSettings) -> StreamStore:
    try:
        store = await StreamStore.open(
            settings.data_dir,
            job_settings=settings.jobs,
            max_storage_bytes=settings.max_storage_gib << 30,
            usage_settings=settings.usage,
            storage=settings.storage,
            shared_storage=settings.shared_storage,
        )
    except lmdb.MemoryError:
        raise StartupError(
            f"--max-storage-gib {settings.max_storage_gib} is more than this machine can map "
            "(LMDB maps the whole limit at once): give less"
        ) from None
    except (OSError, lmdb.Error) as error:
        raise StartupError(
            f"the stream log in --data-dir {settings.data_dir!r} did not open: {error}"
        ) from None
    log.info("storage open: %s", describe_storage(settings.storage, settings.data_dir))
    return store


async def _open_lake(store: StreamStore, settings: LakeSettings) -> Lake:
    try:
        lake = await Lake.open(store, settings)
    except (OSError, duckdb.Error) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        where = (
            f"the embedded catalog is {settings.catalog_uri.removeprefix('ducklake:')}"
            if settings.catalog is None
            else "check --lake-catalog and --lake-data-path"
        )
        raise StartupError(f"the lake did not open: {reason} ({where})") from None
    log.info("lake open: catalog %s, data %s", settings.catalog_uri, settings.data_dir)
    return lake


def _report_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's report of an exception no task handled, except a cancellation.

    Connections still open when the shutdown grace ends are cancelled by Hypercorn, and
    Python 3.11's asyncio streams ask each cancelled connection task for its exception in a
    callback, which raises `CancelledError` there: the loop reported it as an error with a
    traceback, though cancelling is how those connections are meant to end.
    """
    if isinstance(context.get("exception"), asyncio.CancelledError):
        log.debug("cancelled at shutdown: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


async def _stop_frontends(
    store: StreamStore,
    lake: Lake,
    grpc_server: aio.Server,
    http_task: asyncio.Task[None],
    stop: asyncio.Event,
) -> None:
    log.info("shutting down: draining calls, then finishing queued commits")
    stop.set()
    # Calls that only wait end now, so none is cut off at the end of the grace.
    store.drain()
    lake.drain()
    # A frontend that fails while stopping must not keep the store from closing cleanly.
    results = await asyncio.gather(
        grpc_server.stop(SHUTDOWN_GRACE_S), http_task, return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            log.error("frontend failed while stopping", exc_info=result)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Shell completion (`s2s completion bash`): with argcomplete's variables set, this prints
    # the completions and exits; otherwise it does nothing.
    argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    if args.command == "migrate":
        return migrate(args.source, args.target, args.transaction_mib << 20)
    if args.command != "serve":
        return run(args)
    settings = serve_settings(args)
    configure_server(args.log_level, args.log_format)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if not allocator.tune():
        log.info("not glibc: allocator settings left as they are")
    try:
        asyncio.run(serve(settings))
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C while starting, before SIGINT means "stop gracefully": what was opened has
        # been closed on the way out.
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
