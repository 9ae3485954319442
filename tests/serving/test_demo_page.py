"""The demo page end to end, as a person uses it: `landmarks serve --http-port` in a subprocess, headless
Chromium (Debian's chromium + chromedriver, driven by Selenium) opens /, picks a category, uploads an
example photo and sees the numbered points; a category registered meanwhile appears in the list.

The screenshot goes to the test's tmp dir, and also to $LANDMARKS_DEMO_SCREENSHOT when set: the README's
picture was made with
    LANDMARKS_DEMO_SCREENSHOT=docs/images/demo_page.png .venv/bin/python -m pytest tests/serving/test_demo_page.py
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from landmarks.client import LandmarkClient
from tests.serving.helpers import make_adapter, make_core

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")


def _skip_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "headless chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def adapters(tmp_path) -> tuple[Path, int]:
    """The shipped core and faces adapter (a copy: the server may write its store; one category, as each
    costs a load), or tiny ones; and K."""
    store = tmp_path / "adapters"
    store.mkdir()
    if (ROOT / "adapters" / "faces.safetensors").is_file():
        for name in ("core", "faces"):
            shutil.copy(ROOT / "adapters" / f"{name}.safetensors", store)
        return store, 10
    make_core(store / "core.safetensors")
    make_adapter(store / "faces.safetensors", store / "core.safetensors", "faces", k=4)
    return store, 4


@pytest.fixture
def server(adapters):
    store, _ = adapters
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "landmarks.cli", "serve", "--adapters", str(store), "--port", "0",
                             "--http-port", "0", "--threads", "1", "--grace", "1"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        grpc_port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        http_port = re.search(r"demo page on http://127\.0\.0\.1:(\d+)/", line)
        assert grpc_port and http_port, f"{line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        yield int(grpc_port.group(1)), f"http://127.0.0.1:{http_port.group(1)}/"
        proc.send_signal(signal.SIGTERM)  # both planes stop, and the process exits cleanly
        assert proc.wait(timeout=60) == 0
        assert "landmarks server stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser():
    reason = _skip_reason()
    if reason and os.environ.get("LANDMARKS_REQUIRE_BROWSER"):  # .ci/run installs them: missing is a failure
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1180,900", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def category_options(driver) -> list[str]:
    # read in one script: the page rebuilds the list when it polls /v1/categories, so option elements
    # found one call earlier can be gone (StaleElementReferenceException) by the next
    return driver.execute_script("return [...document.querySelectorAll('#category option')].map(o => o.value)")


def test_demo_page_shows_the_landmarks_of_an_uploaded_photo(server, browser, adapters, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    grpc_port, url = server
    store, k = adapters
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    assert browser.title.startswith("landmarks")
    wait.until(lambda d: "faces" in category_options(d))
    Select(browser.find_element(By.ID, "category")).select_by_value("faces")
    browser.find_element(By.ID, "file").send_keys(str(ROOT / "examples" / "face.jpg"))
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))
    status = browser.find_element(By.ID, "status")
    assert status.get_attribute("data-state") == "done", status.text
    assert status.get_attribute("data-landmarks") == str(k)
    rows = browser.find_elements(By.CSS_SELECTOR, "#points tbody tr")
    assert len(rows) == k
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows][:2] == ["p1", "p2"] or k != 10
    assert browser.find_element(By.ID, "canvas").is_displayed()
    # the first point is drawn where the server found it: there the canvas is not the bare photo
    change = browser.execute_script("""
        const c = document.getElementById("canvas"), p = state.result.landmarks[0];
        const s = c.width / state.bitmap.width;
        const x = Math.floor((p.x + 0.5) * s), y = Math.floor((p.y + 0.5) * s);
        const bare = new OffscreenCanvas(c.width, c.height).getContext("2d");
        bare.drawImage(state.bitmap, 0, 0, c.width, c.height);
        const a = c.getContext("2d").getImageData(x, y, 1, 1).data, b = bare.getImageData(x, y, 1, 1).data;
        return Math.abs(a[0] - b[0]) + Math.abs(a[1] - b[1]) + Math.abs(a[2] - b[2]);""")
    assert change > 30
    shot = tmp_path / "demo_page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("LANDMARKS_DEMO_SCREENSHOT"):
        target = Path(os.environ["LANDMARKS_DEMO_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target)

    # a category registered while the page is open joins the list (the page polls /v1/categories)
    with LandmarkClient(f"127.0.0.1:{grpc_port}", timeout=60) as client:
        client.register("people", "v1", store / "faces.safetensors")
    wait.until(lambda d: "people" in category_options(d))


@pytest.fixture
def tiny_server(tmp_path):
    """`landmarks serve --http-port` over the tiny core, with one category: an adaptation job on it takes seconds."""
    store = tmp_path / "tiny"
    store.mkdir()
    make_core(store / "core.safetensors")
    make_adapter(store / "faces.safetensors", store / "core.safetensors", "faces", k=4)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "landmarks.cli", "serve", "--adapters", str(store), "--port", "0",
                             "--http-port", "0", "--threads", "1", "--grace", "1", "--adaptation-nice", "0"],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline()
        http_port = re.search(r"demo page on http://127\.0\.0\.1:(\d+)/", line)
        assert http_port, line
        yield f"http://127.0.0.1:{http_port.group(1)}/"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_new_category_panel_trains_one_and_serves_it(tiny_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.serving.test_adaptations import PHOTOS

    photos = []
    for name, data in PHOTOS:
        photos.append(tmp_path / name)
        photos[-1].write_bytes(data)
    wait = WebDriverWait(browser, 120)
    browser.get(tiny_server)
    wait.until(lambda d: "faces" in category_options(d))
    browser.find_element(By.ID, "new-name").send_keys("mugs")
    browser.find_element(By.ID, "new-files").send_keys("\n".join(map(str, photos)))
    assert browser.find_element(By.ID, "new-count").text == "10 file(s) chosen"
    Select(browser.find_element(By.ID, "new-preset")).select_by_value("smoke")
    browser.find_element(By.ID, "new-start").click()
    wait.until(lambda d: d.find_element(By.ID, "new-status").get_attribute("data-state") in ("done", "error"))
    status = browser.find_element(By.ID, "new-status")
    assert status.get_attribute("data-state") == "done", status.text
    assert "mugs is served: version job-" in status.text
    progress = browser.find_element(By.ID, "new-progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "3"
    # the samples picture was shown, and the new category is in the list, chosen, ready for a photo
    wait.until(lambda d: d.execute_script("return document.getElementById('new-samples').naturalWidth") > 0)
    wait.until(lambda d: "mugs" in category_options(d))
    assert browser.execute_script("return document.getElementById('category').value") == "mugs"
    browser.find_element(By.ID, "file").send_keys(str(photos[0]))
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "done"
    assert browser.find_element(By.ID, "status").get_attribute("data-landmarks") == "10"

    # a bad upload says what was wrong, in the panel
    browser.find_element(By.ID, "new-name").clear()
    browser.find_element(By.ID, "new-name").send_keys("cups")
    browser.execute_script("document.getElementById('new-files').value = ''")
    browser.find_element(By.ID, "new-files").send_keys(str(photos[0]))
    assert browser.find_element(By.ID, "new-count").text == "1 file(s) chosen"
    browser.find_element(By.ID, "new-start").click()
    wait.until(lambda d: d.find_element(By.ID, "new-status").get_attribute("data-state") in ("done", "error"))
    status = browser.find_element(By.ID, "new-status")
    assert status.get_attribute("data-state") == "error" and "1 usable image;" in status.text, status.text
