"""Shared settings of the browser tests: Debian's Chromium driven by Playwright, headless."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip the calling test module, saying how to install Chromium, where it is absent."""
    if not CHROMIUM.exists():
        pytest.skip(
            "/usr/bin/chromium does not exist: install Debian's chromium package "
            "(apt-get install chromium) to run the browser tests",
            allow_module_level=True,
        )
