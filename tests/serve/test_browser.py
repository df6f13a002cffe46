"""The review page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium) against a real server and store (SQLite + Qdrant Edge, and Postgres + a Qdrant server over
HTTP): the grid loads crops, a click shows neighbours with scores, two ticked segments get a label, a
cluster gets a name, and a script-laden label shows as text. Screenshots of the grid and the neighbours
view go to ``$SAMSEARCH_TEST_ARTIFACTS`` (default: the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from samsearch.cluster.naming import cluster_names
from samsearch.reports.stats import collect_stats
from samsearch.search.query import search_by_examples
from samsearch.search.segments import fetch_segments

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
EVIL = '<img src=x onerror="document.title=\'pwned\'">'

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
if not Path(CHROMEDRIVER).exists():  # .ci/run installs it; elsewhere: apt-get install chromium chromium-driver
    pytest.skip("chromedriver not found (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module", params=["sqlite+edge", "postgres+qdrant-http"])
def site(request, tmp_path_factory, build_corpus, serve, backend_home):
    """The page over each backend: SQLite + Qdrant Edge, and Postgres + a Qdrant server over real HTTP
    (the stand-in)."""
    with backend_home(request.param, tmp_path_factory.mktemp("browser") / "home") as home:
        build_corpus(home)
        yield home, serve(home).url


@pytest.fixture
def artifacts(request, tmp_path) -> Path:
    out = Path(os.environ.get("SAMSEARCH_TEST_ARTIFACTS") or tmp_path)
    backend = request.node.callspec.params.get("site", "sqlite+edge")
    if backend != "sqlite+edge":  # docs/serve-grid.png is the embedded home's; the others go in a folder
        out = out / backend
    out.mkdir(parents=True, exist_ok=True)
    return out


def _wait(driver, cond, timeout=60):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: cond(d))


def _loaded_tiles(driver, css):
    """Tiles whose crop image has loaded (a decoded PNG, not a broken image)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].filter("
        "t => { const i = t.querySelector('img'); return i && i.complete && i.naturalWidth > 0; }).length", css)


def _status(driver) -> str:
    return driver.find_element(By.ID, "status").text


def test_grid_neighbours_labels_and_cluster_names(site, browser, artifacts):
    home, url = site
    browser.get(url + "/")
    _wait(browser, lambda d: _loaded_tiles(d, "#grid .tile") >= 10)
    tiles = browser.find_elements(By.CSS_SELECTOR, "#grid .tile")
    browser.save_screenshot(str(artifacts / "serve-grid.png"))

    # click one: its neighbours appear, ranked, with scores, never the query itself
    query = tiles[0].get_attribute("data-id")
    tiles[0].find_element(By.TAG_NAME, "img").click()
    _wait(browser, lambda d: _loaded_tiles(d, "#neighbours .hit") >= 5)
    hits = browser.find_elements(By.CSS_SELECTOR, "#neighbours .hit")
    scores = [float(h.get_attribute("data-score")) for h in hits]
    assert scores == sorted(scores, reverse=True) and query not in {h.get_attribute("data-id") for h in hits}
    assert hits[0].text.startswith("#1 ")
    browser.save_screenshot(str(artifacts / "serve-neighbours.png"))

    # the query's image: every segment outlined, listed with its label
    browser.find_element(By.ID, "open-image").click()
    _wait(browser, lambda d: d.execute_script(
        "const i = document.getElementById('overlay'); return i && i.complete && i.naturalWidth > 0;"))
    listed = [li.get_attribute("data-id") for li in browser.find_elements(By.CSS_SELECTOR, "#image-view li")]
    from samsearch.search.segments import get_image

    image_id = fetch_segments(home, [query])[query].image_id
    assert listed == [s.segment_id for s in get_image(home, image_id).segments] and query in listed
    browser.save_screenshot(str(artifacts / "serve-image.png"))
    other = next(li for li in browser.find_elements(By.CSS_SELECTOR, "#image-view li")
                 if li.get_attribute("data-id") != query)
    other_id = other.get_attribute("data-id")
    other.click()  # a listed segment: its neighbours
    _wait(browser, lambda d: _loaded_tiles(d, "#neighbours .hit") >= 5)
    assert other_id in browser.find_element(By.ID, "nb-title").text
    tiles[0].find_element(By.TAG_NAME, "img").click()  # back to the first segment's neighbours
    _wait(browser, lambda d: query in d.find_element(By.ID, "nb-title").text
          and _loaded_tiles(d, "#neighbours .hit") >= 5)
    hits = browser.find_elements(By.CSS_SELECTOR, "#neighbours .hit")

    # relevance feedback: like one hit, unlike another, refine: the library's answer, examples left out
    liked, unliked = hits[1].get_attribute("data-id"), hits[2].get_attribute("data-id")
    hits[1].find_element(By.CSS_SELECTOR, "button.like").click()
    hits[2].find_element(By.CSS_SELECTOR, "button.unlike").click()
    assert "liked" in hits[1].get_attribute("class") and "unliked" in hits[2].get_attribute("class")
    browser.find_element(By.ID, "refine").click()
    _wait(browser, lambda d: "refined (" in _status(d))
    refined = [h.get_attribute("data-id") for h in browser.find_elements(By.CSS_SELECTOR, "#neighbours .hit")]
    assert refined == [h.segment_id for h in search_by_examples(home, [query, liked], [unliked], k=12)]
    assert not {query, liked, unliked} & set(refined)

    # tick two, type a (script-laden) label, assign: stored as a manual label, shown as text
    picked = [t.get_attribute("data-id") for t in tiles[1:3]]
    for t in tiles[1:3]:
        t.find_element(By.CSS_SELECTOR, "input.sel").click()
    browser.find_element(By.ID, "label-input").send_keys(EVIL)
    browser.find_element(By.ID, "assign").click()
    _wait(browser, lambda d: "labeled 2" in _status(d))
    stored = fetch_segments(home, picked)
    assert {s.label for s in stored.values()} == {EVIL}
    counts = {e["label"]: e for e in collect_stats(home)["labels"]}  # what `samsearch stats` prints
    assert counts[EVIL]["count"] == 2 and counts[EVIL]["by_source"] == {"manual": 2}
    shown = f"{EVIL} \u00b7 a"  # the caption: label · dataset, as text
    _wait(browser, lambda d: sorted(t.get_attribute("textContent") for t in d.find_elements(
        By.CSS_SELECTOR, "#grid .tile") if t.get_attribute("data-id") in picked) == [shown, shown])
    assert browser.title == "samsearch"  # the onerror handler never ran
    assert not browser.find_elements(By.CSS_SELECTOR, "#grid img[src='x']")

    # tick one of them again and clear its manual label
    tile = next(t for t in browser.find_elements(By.CSS_SELECTOR, "#grid .tile")
                if t.get_attribute("data-id") == picked[0])
    tile.find_element(By.CSS_SELECTOR, "input.sel").click()
    browser.find_element(By.ID, "unassign").click()
    _wait(browser, lambda d: "cleared the manual label of 1" in _status(d))
    stored = fetch_segments(home, picked)
    assert (stored[picked[0]].label, stored[picked[1]].label) == (None, EVIL)

    # clusters view: name the first cluster
    browser.find_element(By.ID, "show-clusters").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#clusters .cluster .cname"))
    first = browser.find_element(By.CSS_SELECTOR, "#clusters .cluster")
    cluster = int(first.get_attribute("data-cluster"))
    first.find_element(By.CSS_SELECTOR, ".cname").send_keys("round thing")
    first.find_element(By.CSS_SELECTOR, ".cname-btn").click()
    _wait(browser, lambda d: f"cluster {cluster} named" in _status(d))
    assert cluster_names(home, "k3")[cluster] == "round thing"
