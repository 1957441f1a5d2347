"""The upload page in a real browser: headless Chromium against the live ``fcnseg serve`` on 127.0.0.1.

It opens the page, chooses an image, waits for the overlay, checks the legend against the API, moves the
slider (by mouse and by keyboard), drops a second image, sends a bad file, and saves a screenshot.
Skipped only where chromium cannot be had; in CI (``CI`` set, where .ci/run installs it) it must run.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.serving import call

import fcnseg
from fcnseg.data.camvid import CAMVID_CLASSES

pytestmark = pytest.mark.slow


@pytest.fixture
def driver():
    from scripts import _browser

    why = _browser.missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {why}")
        pytest.skip(why)
    d = _browser.chromium()
    yield d
    d.quit()


def _street(path, h=120, w=160):
    """A bundled CamVid frame, shrunk (the live server's --max-pixels is small)."""
    src = Path(fcnseg.__file__).parent / "data" / "sample" / "camvid" / "val" / "0016E5_07959.jpg"
    Image.open(src).convert("RGB").resize((w, h)).save(path)
    return path


def test_the_upload_page_in_headless_chromium(live_server, driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    from scripts import _browser

    image = _street(tmp_path / "street.png")
    _browser.show(driver, live_server + "/", image, opacity=50)
    assert driver.find_element("id", "error").text == ""
    facts = driver.find_element("id", "facts").text
    assert "fcn8s" in facts and "engine torch-fp32-cl-trim" in facts

    # the overlay: the image under the label map, both at the image's size
    sizes = driver.execute_script("""const l = document.getElementById('labels'), u = document.getElementById('under');
        return [l.naturalWidth, l.naturalHeight, u.naturalWidth, u.naturalHeight, l.getBoundingClientRect().width,
                u.getBoundingClientRect().width];""")
    assert sizes[:4] == [160, 120, 160, 120] and sizes[4] == pytest.approx(sizes[5], abs=1)

    # the legend: the API's classes and shares, in the dataset's colours
    api = call(live_server + "/predict?format=json", "POST", image.read_bytes(), {"Content-Type": "image/png"}).json()
    colours = {c["index"]: c["color"] for c in call(live_server + "/classes").json()["classes"]["out"]}
    rows = _browser.legend(driver)
    assert [(r["index"], r["name"]) for r in rows] == [(c["index"], c["name"]) for c in api["images"][0]["classes"]]
    assert all(r["name"] == CAMVID_CLASSES[r["index"]] for r in rows)
    assert [r["share"] for r in rows] == [f"{100 * c['fraction']:.1f}%" for c in api["images"][0]["classes"]]
    assert all(r["color"] == "rgb({}, {}, {})".format(*colours[r["index"]]) for r in rows)
    timing = driver.find_element("id", "timing").text
    assert "160×120" in timing and "model" in timing and "round trip" in timing

    # the slider: a mouse drag to the right raises the opacity; the keyboard sets it exactly
    opacity = lambda: float(driver.execute_script("return getComputedStyle(document.getElementById('labels')).opacity"))
    assert opacity() == pytest.approx(0.5)
    slider = driver.find_element("id", "opacity")
    ActionChains(driver).click_and_hold(slider).move_by_offset(slider.size["width"] // 3, 0).release().perform()
    assert opacity() > 0.6
    _browser.set_opacity(driver, 70)
    assert opacity() == pytest.approx(0.7) and driver.find_element("id", "opacity-value").text == "70%"

    # drag and drop a second image (a JPEG): the result follows it
    jpeg = tmp_path / "second.jpg"
    Image.open(image).save(jpeg, quality=90)
    _browser.drop_file(driver, "drop", jpeg, "image/jpeg")
    _browser.wait_ready(driver)
    assert driver.find_element("id", "name").text == "second.jpg" and _browser.legend(driver)

    # a file that is no image: the server's one-line error on the page, and the page still works
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    _browser.drop_file(driver, "drop", bad)
    _browser.wait_ready(driver)
    assert "not an image" in driver.find_element("id", "error").text
    driver.find_element("id", "file").send_keys(str(image))
    _browser.wait_ready(driver)
    assert driver.find_element("id", "error").text == "" and driver.find_element("id", "name").text == "street.png"

    # nothing loaded from outside the machine
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(("http://127.0.0.1", "data:", "blob:")) for u in urls), urls

    shot = tmp_path / "serve.png"
    assert driver.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"))
    assert pixels.shape[0] > 400 and pixels.std() > 10  # a page was drawn, not a blank
