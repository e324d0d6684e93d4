"""Error responses: status and body come from the error table in `s2s.errors`.

Standard failures answer `{"code", "message"}`; the 412 and 416 failures answer their bare
bodies (`seq_num_mismatch`, `fencing_token_mismatch`, `tail`), which the SDK parses.
"""

from __future__ import annotations

import logging

from s2s.errors import S2Error
from server.http_frontend.exchange import Exchange

log = logging.getLogger("s2s.http")


async def respond_error(exchange: Exchange, error: S2Error) -> None:
    await exchange.respond_json(error.kind.http_status, error.body())


def internal_error(error: BaseException) -> S2Error:
    """An unexpected exception, logged here and reported as the retryable `other`."""
    log.exception("unexpected error in HTTP handler", exc_info=error)
    return S2Error("other", "internal server error")
