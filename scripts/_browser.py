"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by selenium: for the upload page's test
and its screenshot (scripts/serve_screenshot.py)."""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

try:  # the dev extra; without it missing() says so and the browser test skips
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)


def _which(names: tuple[str, ...]) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def missing() -> str | None:
    """Why no browser test can run here (None when chromium, its driver and selenium are all present)."""
    if webdriver is None:
        return "selenium is not installed (the dev extra)"
    if _which(CHROMIUM) is None:
        return "chromium is not installed (apt-get install chromium chromium-driver; .ci/run does it)"
    if _which(DRIVER) is None:
        return "chromedriver is not installed (apt-get install chromium-driver; .ci/run does it)"
    return None


def chromium(width: int = 1360, height: int = 900):
    """A headless Chromium session (no network but loopback is needed: the page has no outside asset)."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = _which(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(executable_path=_which(DRIVER)))


def drop_file(driver, target_id: str, path: Path, mime: str = "image/png") -> None:
    """Drop ``path`` on the element ``target_id`` as a drag-and-drop from the desktop would (a ``drop``
    event whose DataTransfer holds the file)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    driver.execute_script("""
        const [id, b64, name, mime] = arguments;
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: mime}));
        const target = document.getElementById(id);
        for (const type of ["dragenter", "dragover", "drop"])
            target.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
    """, target_id, data, Path(path).name, mime)


def wait_ready(driver, timeout: float = 120) -> None:
    """Wait until the page shows a result (the overlay loaded and the legend filled) or an error."""
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "return document.getElementById('result').dataset.ready === '1' || "
        "document.getElementById('error').textContent !== ''"))


def legend(driver) -> list[dict]:
    """The legend's rows: class index, name, share shown and the swatch's colour."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#legend tr.legend-row')].map(tr => ({
            index: Number(tr.dataset.index), name: tr.cells[0].textContent.trim(),
            share: tr.cells[1].textContent.trim(),
            color: getComputedStyle(tr.querySelector('.swatch')).backgroundColor}));""")


def set_opacity(driver, percent: int) -> None:
    """Move the opacity slider with the keyboard, as a user would: End (100%), then Left arrows."""
    slider = driver.find_element("id", "opacity")
    slider.send_keys(Keys.END)
    slider.send_keys(*([Keys.ARROW_LEFT] * (100 - percent)))


def show(driver, url: str, image: Path, opacity: int = 60, timeout: float = 120) -> None:
    """Open the page at ``url``, choose ``image`` in its file chooser, wait for the overlay, set the opacity."""
    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: "engine" in d.find_element("id", "facts").text)
    driver.find_element("id", "file").send_keys(str(Path(image).resolve()))
    wait_ready(driver, timeout)
    set_opacity(driver, opacity)
