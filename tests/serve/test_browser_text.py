"""The page's text box in a real headless Chromium (skipped without selenium/chromedriver): typing a text
and pressing Enter shows the hits of ``POST /api/search`` ``text`` in the home's text-image space, ranked as
the library ranks them; a home without one shows the error in the status line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from samsearch.home import Home
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.search.query import search_text
from samsearch.spaces.models import load_space

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
if not Path(CHROMEDRIVER).exists():
    pytest.skip("chromedriver not found (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SPACE = "clip-tiny-random"


def _wait(driver, cond, timeout=60):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: cond(d))


def _hits(driver) -> list[str]:
    return [t.get_attribute("data-id") for t in driver.find_elements(By.CSS_SELECTOR, "#neighbours .hit")]


def test_the_text_box_runs_a_text_search(tmp_path, tiny_model, shapes, serve, browser):
    clip = load_space(SPACE, device="cpu")
    files = [im.path for im in shapes.images[:4]]
    opts = IngestOptions(dataset="a", prompts="masks", annotations=shapes.annotations_path)
    with Home(tmp_path / "home") as home, Home(tmp_path / "sam-only") as plain:
        ingest(home, files, tiny_model, opts, progress=False, spaces=[clip])
        ingest(plain, files[:1], tiny_model, opts, progress=False)
        want = [h.segment_id for h in search_text(home, "a red disc", k=24, space_model=clip)]

        browser.get(serve(home).url + "/")
        box = browser.find_element(By.ID, "text-query")
        box.send_keys("a red disc", Keys.ENTER)
        _wait(browser, lambda d: len(_hits(d)) == len(want))
        assert _hits(browser) == want
        assert browser.find_element(By.ID, "nb-title").text == f'segments matching "a red disc" (space {SPACE})'
        hits = browser.find_elements(By.CSS_SELECTOR, "#neighbours .hit")
        scores = [float(t.get_attribute("data-score")) for t in hits]
        assert scores == sorted(scores, reverse=True)

        browser.get(serve(plain).url + "/")
        browser.find_element(By.ID, "text-query").send_keys("a red disc")
        browser.find_element(By.ID, "text-search").click()
        _wait(browser, lambda d: "no text-image space" in d.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "status").get_attribute("class") == "err" and not _hits(browser)
