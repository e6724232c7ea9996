"""What the real-browser tests share: Debian's Chromium (required where CI installs it), the flags
it needs on a closed network, a free loopback port, and keeping the screenshots."""

import os
import socket
from pathlib import Path

import pytest

# headless, no sandbox (root in CI), and none of Chromium's own network traffic
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


def chromium_or_skip() -> Path:
    """The browser, or a skip where it is absent; a failure where CXR_BROWSER_TESTS=1 asks for it."""
    chromium = Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))
    if not chromium.exists():
        if os.environ.get("CXR_BROWSER_TESTS") == "1":
            pytest.fail(f"CXR_BROWSER_TESTS=1 but there is no browser at {chromium}")
        pytest.skip(f"no Chromium at {chromium} (apt-get install chromium)")
    return chromium


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keep_screenshots(folder: Path) -> None:
    """Copy the test's screenshots to CXR_SCREENSHOT_DIR, when set."""
    keep = os.environ.get("CXR_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for taken in Path(folder).glob("*.png"):
            (Path(keep) / taken.name).write_bytes(taken.read_bytes())
