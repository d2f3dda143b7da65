"""The browser of the page tests: Debian's chromium + chromedriver (`make browser` installs them),
driven headless by Selenium. A module that imports this is skipped, saying why, where they are missing."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (`make browser` as root installs them)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402


def headless_chrome(width: int, height: int):
    """A headless Chromium window of `width` x `height`; `quit()` it when done."""
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(DRIVER), options=options)
