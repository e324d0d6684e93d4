"""The web console: a page of plain ES modules (`static/`, shipped as package data) that the
HTTP port serves at `/console` and that talks only to the public API (ADR 0014)."""
