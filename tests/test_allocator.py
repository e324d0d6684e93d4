"""The server's allocator settings take effect on glibc (this project's Debian target)."""

from __future__ import annotations

import platform

import pytest

from s2s import allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_settings() -> None:
    assert allocator.tune() is True
