"""The HTTP frontend: S2's v1 REST API (JSON, protobuf, S2S sessions) over Hypercorn."""

from server.http_frontend.app import HttpApp
from server.http_frontend.server import start_http_server

__all__ = ["HttpApp", "start_http_server"]
