"""Headless Chromium through Selenium, as the report's tests and benchmark open the page.

Selenium is in the `test` extra; this module is imported only by them.
"""

from __future__ import annotations

import shutil


def headless_chromium(browser_log: bool = False):
    """A WebDriver for the system's chromium and chromedriver (`make setup-host` installs both),
    offline and quiet: no network services, GPU or sandbox. `browser_log` keeps the console log
    readable through `driver.get_log("browser")`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,2400"):
        opts.add_argument(flag)
    if browser_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
