"""The explorer page (mechgrok.explorer), opened in a real headless Chromium through selenium.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium
chromium-driver``) and selenium (the ``test`` extra); they skip with the reason where either is absent. Chromium
runs offline (network emulated off), with a fresh profile that is removed afterwards.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile

import numpy as np
import pytest

from mechgrok.explorer import SECTIONS, explorer_html, write_explorer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def test_page_is_self_contained(fixture_analysis):
    page = explorer_html(fixture_analysis)
    assert page.count('class="plotly-graph-div"') == len(SECTIONS)
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js inlined: nothing to fetch
    assert "Not shown" not in page


def test_missing_groups_are_named(fixture_analysis):
    tree = fixture_analysis.copy()
    for name in ("neurons", "reference"):
        del tree[name]
    page = explorer_html(tree)
    assert 'id="clusters"' not in page and 'id="attention"' not in page
    assert "Not shown (analysis not in the tree): Neuron clusters, Attention patterns" in page


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium or chromedriver not found (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mechgrok-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                "--window-size=1200,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                               {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser, fixture_analysis, fixture_trajectory, tmp_path_factory):
    path = write_explorer(fixture_analysis, tmp_path_factory.mktemp("explorer") / "explorer.html",
                          trajectory=fixture_trajectory)
    browser.get(path.as_uri())
    browser.implicitly_wait(5)
    return browser


def _norms(driver, trace):
    return np.array(driver.execute_script(
        f"return Array.from(document.getElementById('fourier-norms')._fullData[{trace}].y)"))


def test_loads_without_console_errors(page, fixture_analysis):
    from mechgrok.figures.analysis import phase_spans

    plots = page.execute_script("return [...document.querySelectorAll('.js-plotly-plot')].map(e => e.id)")
    assert plots == list(SECTIONS)
    errors = [e for e in page.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    # the curves carry the per-epoch losses, hover on, and the three phases shaded
    n_points = page.execute_script("return document.getElementById('curves')._fullData[0].x.length")
    assert n_points == 3001
    shapes = page.execute_script("return document.getElementById('curves')._fullLayout.shapes.map(s => [s.x0, s.x1])")
    spans = {(a, b) for _, a, b in phase_spans(fixture_analysis)}
    assert len(spans) == 3 and {tuple(s) for s in shapes} == spans  # each shaded on both panels


def test_slider_changes_the_plot(page, fixture_analysis):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    fn = fixture_analysis["fourier_norms"]
    before = _norms(page, 0)
    np.testing.assert_allclose(before, fn["W_E_fourier_norm"].isel(checkpoint=-1).values, rtol=1e-12)
    page.execute_script("document.getElementById('fourier-norms').scrollIntoView()")
    rail = page.find_element(By.CSS_SELECTOR, "#fourier-norms .slider-rail-rect")
    ActionChains(page).move_to_element_with_offset(rail, -rail.size["width"] // 2 + 2, 0).click().perform()
    page.execute_script("return new Promise(r => setTimeout(r, 300))")
    assert page.execute_script("return document.getElementById('fourier-norms')._fullLayout.sliders[0].active") == 0
    after_E, after_logit = _norms(page, 0), _norms(page, 1)
    assert not np.allclose(after_E, before)
    np.testing.assert_allclose(after_E, fn["W_E_fourier_norm"].isel(checkpoint=0).values, rtol=1e-12)
    np.testing.assert_allclose(after_logit, fn["W_logit_fourier_norm"].isel(checkpoint=0).values, rtol=1e-12)
    labels = page.find_elements(By.CSS_SELECTOR, "#fourier-norms .slider-container text.slider-label")
    assert labels[0].text == "epoch 0"  # the current value shown above the slider


def test_screenshot_is_not_blank(page):
    from PIL import Image

    page.execute_script("document.getElementById('fourier-norms').scrollIntoView()")
    img = np.asarray(Image.open(io.BytesIO(page.get_screenshot_as_png())).convert("RGB"))
    assert img.shape[0] > 500 and img.shape[1] > 800
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # bars, axes, text: not a blank or single-colour page
    assert (img != 255).any(axis=2).mean() > 0.05  # more than 5% of the pixels are not white
