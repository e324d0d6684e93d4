"""Headless Chromium for the console's end-to-end tests: Debian's `chromium`, driven by
Playwright (this machine cannot download Playwright's own browsers). `make chromium` installs
it; screenshots go to `build/console-screenshots/` (or `S2S_CONSOLE_SCREENSHOTS`), which the
Makefile owns and git ignores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.server_process import REPO

CHROMIUM = Path(os.environ.get("S2S_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(
    os.environ.get("S2S_CONSOLE_SCREENSHOTS", REPO / "build" / "console-screenshots")
)
VIEWPORT: ViewportSize = {"width": 1280, "height": 860}
README_VIEWPORT: ViewportSize = {"width": 960, "height": 600}

# Assertions wait up to 10 s for the page (Playwright's default is 5) on a loaded 2-core
# machine; the live tail's one-second promise is asserted with its own timeout.
expect.set_options(timeout=10_000)


def launch_chromium() -> Iterator[Browser]:
    """One browser for a test module."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class ConsolePage:
    """A fresh browser context (its own sessionStorage) on the console, recording every error
    the page logs (a CSP violation is one) and every exception it throws."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.context = browser.new_context(viewport=VIEWPORT, base_url=base_url)
        self.context.set_default_timeout(10_000)
        self.page: Page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"exception: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        # Failed requests the test caused on purpose (401, 403) are logged as errors too.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.problems.append(message.text)

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def readme_screenshot(self, name: str) -> None:
        """A small one, of the top of the page only: the README's is taken from it."""
        self.page.set_viewport_size(README_VIEWPORT)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
        self.page.set_viewport_size(VIEWPORT)

    def close(self) -> None:
        self.context.close()
        assert self.problems == [], self.problems
