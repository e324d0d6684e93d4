"""CORS against real `s2s serve` processes: with `--cors-origins` naming two origins, with `*`,
and with none (the default: no CORS headers at all, preflights answered as any other request).
"""

from __future__ import annotations

import http.client
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import REPO, SOURCE_TREE_S2S, ServerProcess, environment_without_s2s

ALLOWED = "https://app.example.com"
ALSO_ALLOWED = "http://localhost:3000"
NOT_ALLOWED = "https://evil.example.com"
# What S2's TypeScript SDK asks to send from a browser, plus one header the API does not take.
SDK_HEADERS = "authorization,content-type,s2-basin,s2-format,s2-request-token,accept,x-custom"
SDK_HEADERS_ALLOWED = "authorization, content-type, s2-basin, s2-format, s2-request-token, accept"
EXIT_USAGE = 2


def _start(directory: Path, *extra_args: str, auth: bool = False) -> ServerProcess:
    return ServerProcess(str(directory / "data"), extra_args=list(extra_args), auth=auth).start()


@pytest.fixture(scope="module")
def two_origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Given with a default port and in upper case: browsers send neither.
    origins = f"{ALLOWED.upper()}:443, {ALSO_ALLOWED}"
    process = _start(tmp_path_factory.mktemp("cors"), "--cors-origins", origins)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def any_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = _start(tmp_path_factory.mktemp("cors-any"), "--cors-origins", "*")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def with_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = _start(tmp_path_factory.mktemp("cors-auth"), "--cors-origins", ALLOWED, auth=True)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def no_cors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = _start(tmp_path_factory.mktemp("no-cors"))
    yield process
    process.stop()


def request(
    server: ServerProcess, method: str, path: str, headers: dict[str, str]
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    connection.request(method, path, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def preflight(server: ServerProcess, origin: str | None) -> http.client.HTTPResponse:
    headers = {
        "access-control-request-method": "POST",
        "access-control-request-headers": SDK_HEADERS,
    }
    if origin is not None:
        headers["origin"] = origin
    return request(server, "OPTIONS", "/v1/streams/events/records", headers)


def cors_headers(response: http.client.HTTPResponse) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in response.getheaders()
        if name.lower().startswith("access-control-") or name.lower() == "vary"
    }


@pytest.mark.parametrize("origin", [ALLOWED, ALSO_ALLOWED])
def test_preflight_from_an_allowed_origin(two_origins: ServerProcess, origin: str) -> None:
    response = preflight(two_origins, origin)
    assert response.status == 204
    assert cors_headers(response) == {
        "access-control-allow-origin": origin,
        "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE",
        "access-control-allow-headers": SDK_HEADERS_ALLOWED,
        "access-control-max-age": "7200",
        "vary": "origin, access-control-request-headers",
    }


def test_preflight_from_another_origin_gets_no_cors(two_origins: ServerProcess) -> None:
    refused = preflight(two_origins, NOT_ALLOWED)
    assert cors_headers(refused) == {}
    # Answered by the API as any OPTIONS request is.
    assert refused.status == preflight(two_origins, None).status != 204


def test_no_origins_configured_no_cors(no_cors: ServerProcess) -> None:
    response = preflight(no_cors, ALLOWED)
    assert cors_headers(response) == {}
    assert response.status == preflight(no_cors, None).status != 204
    actual = request(no_cors, "GET", "/health", {"origin": ALLOWED})
    assert actual.status == 200 and cors_headers(actual) == {}


def test_actual_requests_get_cors_headers(two_origins: ServerProcess) -> None:
    created = request(two_origins, "PUT", "/v1/basins/cors-basin", {"origin": ALLOWED})
    assert created.status == 201
    assert cors_headers(created) == {
        "access-control-allow-origin": ALLOWED,
        "access-control-expose-headers": "s2-provision-result",
        "vary": "origin",
    }
    # An error answer too: a browser script must be able to read why it failed.
    missing = request(two_origins, "GET", "/v1/basins/cors-missing", {"origin": ALSO_ALLOWED})
    assert missing.status == 404
    assert cors_headers(missing)["access-control-allow-origin"] == ALSO_ALLOWED
    assert cors_headers(request(two_origins, "GET", "/health", {"origin": NOT_ALLOWED})) == {}
    assert cors_headers(request(two_origins, "GET", "/health", {})) == {}


def test_preflight_needs_no_token(with_tokens: ServerProcess) -> None:
    """Browsers send no `authorization` on a preflight: it is answered before the token check,
    and the refusal of the actual request without a token still reaches the page's script."""
    assert preflight(with_tokens, ALLOWED).status == 204
    refused = request(with_tokens, "GET", "/v1/basins", {"origin": ALLOWED})
    assert refused.status == 401
    assert cors_headers(refused)["access-control-allow-origin"] == ALLOWED
    token = {"origin": ALLOWED, "authorization": f"Bearer {with_tokens.root_token}"}
    assert request(with_tokens, "GET", "/v1/basins", token).status == 200


def test_any_origin(any_origin: ServerProcess) -> None:
    response = preflight(any_origin, NOT_ALLOWED)
    assert response.status == 204
    assert cors_headers(response)["access-control-allow-origin"] == "*"
    actual = request(any_origin, "GET", "/health", {"origin": "null"})
    assert cors_headers(actual)["access-control-allow-origin"] == "*"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("https://app.example.com/", "is not an origin"),
        ("app.example.com", "is not an origin"),
        ("https://app.example.com,*", "give it alone"),
    ],
)
def test_bad_origins_are_a_usage_error(value: str, says: str, tmp_path: Path) -> None:
    for args, env in (
        (["--cors-origins", value], {}),
        ([], {"S2S_CORS_ORIGINS": value}),
    ):
        result = subprocess.run(
            [*SOURCE_TREE_S2S, "serve", "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**environment_without_s2s(), **env},
            timeout=60,
        )
        assert result.returncode == EXIT_USAGE
        [line] = result.stderr.splitlines()
        assert says in line, line
