"""The web page in a real headless browser (Debian's chromium, driven by Selenium): upload a sign and read the
right top-1 name on the page; upload a file that is no image and read the error. ``.ci/run`` installs the
browser; without one these tests skip and say why."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from gtsrb.data.synthetic import make_synthetic
from gtsrb.inference import Predictor
from test_evaluate import trained_run  # noqa: F401  (session-scoped trained checkpoint)
from test_serve import server  # noqa: F401  (session-scoped running server)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="no chromium/chromedriver on this machine (apt-get install chromium "
                                       "chromium-driver; .ci/run does)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait_for(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def test_uploading_a_sign_shows_its_top_class_and_the_gradcam_overlay(browser, server, trained_run,  # noqa: F811
                                                                      tmp_path):
    from selenium.webdriver.common.by import By

    sign = make_synthetic(1, 64, seed=3).images[14]  # a stop sign
    path = tmp_path / "sign.png"
    Image.fromarray(sign.permute(1, 2, 0).numpy()).save(path)
    predictor = Predictor.from_checkpoint(trained_run, device="cpu")
    expected = predictor.class_names[int(predictor.predict_files([path]).argmax())]

    browser.get(server + "/")
    _wait_for(browser, lambda d: d.find_element(By.ID, "model-name").text not in ("", "…"))
    assert browser.find_element(By.ID, "model-name").text == "simple_cnn"
    assert "accuracy" in browser.find_element(By.ID, "model-accuracy").text
    _wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples img")) >= 6)
    browser.find_element(By.ID, "file").send_keys(str(path))
    _wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#bars .bar .name"))
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#bars .bar .name")]
    assert names[0] == expected and len(names) == 5
    _wait_for(browser, lambda d: d.find_element(By.ID, "gradcam").is_displayed())
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_clicking_an_example_sign_classifies_it(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    _wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples img")) >= 6)
    browser.find_elements(By.CSS_SELECTOR, "#examples img")[0].click()
    _wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#bars .bar .name"))
    assert browser.find_element(By.ID, "preview").is_displayed()


def test_uploading_a_file_that_is_no_image_shows_a_readable_error(browser, server, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    path = tmp_path / "notes.png"
    path.write_text("shopping list: milk, eggs")
    browser.get(server + "/")
    _wait_for(browser, lambda d: d.find_element(By.ID, "model-name").text not in ("", "…"))
    browser.find_element(By.ID, "file").send_keys(str(path))
    _wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "notes.png is not an image" in browser.find_element(By.ID, "error").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
