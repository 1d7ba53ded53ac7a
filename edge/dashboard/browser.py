"""Headless Chromium for pictures of the page (`make demo`'s screenshot) and for its tests and
bench. Debian's `chromium` and `chromium-driver`, driven by Selenium (a dev dependency)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import VqadError

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver


class BrowserMissingError(VqadError):
    """No headless Chromium here (or no Selenium)."""


def headless_chromium(width: int = 1400, height: int = 1000) -> WebDriver:
    """A Selenium driver for headless Chromium; BrowserMissingError says what to install.

    Chromium's profile and its temporary files live in one folder that `quit()` removes:
    left to itself, Chromium leaves a folder in /tmp at every start."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        raise BrowserMissingError("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise BrowserMissingError("Selenium is not installed (pip install -e '.[dev]')") from exc

    class Chrome(webdriver.Chrome):
        def quit(self) -> None:
            try:
                super().quit()
            finally:
                _remove(scratch)

    scratch = tempfile.mkdtemp(prefix="vqad-chromium-")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                f"--user-data-dir={scratch}/profile"):  # fmt: skip
        options.add_argument(arg)
    try:
        return Chrome(options=options, service=Service(driver, env={**os.environ, "TMPDIR": scratch}))
    except BaseException:
        _remove(scratch)
        raise


def _remove(folder: str, tries: int = 20) -> None:
    """Remove `folder`, which Chromium's last processes may still write to for a moment after
    `quit()` returns."""
    for _ in range(tries):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder):
            return
        time.sleep(0.1)


def page_footprint(driver: WebDriver) -> dict[str, float]:
    """What an open page holds, after a full garbage collection (Chrome DevTools): its
    JavaScript heap in MB, its DOM nodes (attached or not) and its event listeners."""
    driver.execute_cdp_cmd("Performance.enable", {})
    driver.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    got = {m["name"]: m["value"] for m in driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]}
    return {"heap_mb": round(got["JSHeapUsedSize"] / 2**20, 2), "nodes": int(got["Nodes"]),
            "listeners": int(got["JSEventListeners"])}  # fmt: skip


def screenshot(url: str, out: str | Path, settle_s: float = 3.0, timeout_s: float = 20.0) -> Path:
    """Open the dashboard at `url`, wait until it has drawn a summary and its galleries have
    loaded (then `settle_s` for the pictures), and save a PNG of the window to `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    driver = headless_chromium()
    try:
        driver.get(url)
        deadline = time.monotonic() + timeout_s
        drawn = "return window.vqadStats && window.vqadStats.renders > 0 && window.vqadStats.galleryFetches > 0"
        while time.monotonic() < deadline and not driver.execute_script(drawn):
            time.sleep(0.1)
        time.sleep(settle_s)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
    return out
