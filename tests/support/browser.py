"""A headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium) and the
dashboard served on a free loopback port in a thread: for the browser tests and docs/'s
screenshots."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import threading
import time
from contextlib import contextmanager

INSTALL_HINT = ("the browser tests need selenium (pip install selenium) and Debian's chromium and chromium-driver "
                "(apt-get install chromium chromium-driver; `make install` does it where apt-get is available)")


def browser_missing() -> str | None:
    """Why no headless browser can run here (what to install), or None when one can."""
    if importlib.util.find_spec("selenium") is None:
        return INSTALL_HINT
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        return INSTALL_HINT
    return None


def headless_chromium(width: int = 1400, height: int = 1000):
    """A selenium driver for a headless Chromium (call :func:`browser_missing` first)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
              "--disable-gpu"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


@contextmanager
def served(app, timeout: float = 30.0):
    """Serve an ASGI ``app`` with uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("the dashboard server did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(driver, css: str, n: int = 1, timeout: float = 20.0):
    """The elements matching ``css`` once there are at least ``n`` of them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        lambda d: (els := d.find_elements(By.CSS_SELECTOR, css)) and len(els) >= n and els)
