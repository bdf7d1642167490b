"""End to end in a real headless Chromium: upload, wait, view, reload, box mode, download.

Needs Debian's ``chromium`` at /usr/bin/chromium (``apt-get install -y chromium``); without it the test
fails, it does not skip.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Page, sync_playwright

from autoprompt.serve import ServeSettings, create_app
from pipeline.io import read_image
from tests.conftest import REPO_ROOT
from tests.serve.conftest import wait_for_model, write_scan

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO_ROOT / "test-artifacts" / "serve_result.png"
WAIT_MS = 180_000  # a safety limit for a slow shared machine, not a timing check


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server_url(settings: ServeSettings, tmp_path: Path) -> Iterator[str]:
    """uvicorn serving a fresh app on 127.0.0.1 and a free port, in a background thread, its model loaded."""
    app = create_app(replace(settings, data_dir=tmp_path / "jobs"))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    wait_for_model(lambda: json.load(urllib.request.urlopen(f"{url}/api/health")))
    yield url
    server.should_exit = True
    thread.join(30)


def _image_loaded(page: Page) -> int:
    page.wait_for_function(
        "() => { const i = document.getElementById('slice-image'); return i.complete && i.naturalWidth > 0; }",
        timeout=WAIT_MS,
    )
    return page.eval_on_selector("#slice-image", "image => image.naturalWidth")


@pytest.mark.browser
def test_upload_view_and_download_in_chromium(server_url: str, tmp_path: Path) -> None:
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing; install it with: apt-get update && apt-get install -y chromium"
    )
    scan = write_scan(tmp_path / "patient scan.nii.gz", shape=(3, 48, 40), seed=7)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 900})
            page.goto(server_url)
            page.wait_for_selector("#model-line:has-text('Dataset901_Synthetic')")
            page.set_input_files("#file-input", str(scan))
            page.click("#upload-button")
            page.wait_for_selector("#result-panel:not([hidden])", timeout=WAIT_MS)
            assert "job=" in page.url
            assert _image_loaded(page) > 0
            assert page.locator("#legend tbody tr").count() == 2
            assert page.locator("#legend tbody").inner_text().count("class") == 2

            page.reload()  # the job id in the URL brings the result back
            page.wait_for_selector("#result-panel:not([hidden])", timeout=WAIT_MS)
            page.fill("#slice-slider", "2")
            page.wait_for_function("() => document.getElementById('slice-image').src.includes('slice=2')")
            assert _image_loaded(page) > 0

            with page.expect_download() as download_info:
                page.click("#download-labels")
            download = download_info.value
            assert download.suggested_filename == "patient scan_seg.nii.gz"
            result = tmp_path / "downloaded.nii.gz"
            download.save_as(result)
            labels, geometry = read_image(result)
            assert geometry.matches(read_image(scan)[1]) and labels.shape == (3, 48, 40)

            page.click("#box-button")
            box = page.locator("#box-canvas").bounding_box()
            page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.3 * box["height"])
            page.mouse.down()
            page.mouse.move(box["x"] + 0.7 * box["width"], box["y"] + 0.8 * box["height"], steps=5)
            page.mouse.up()
            page.wait_for_selector("#box-info:has-text('pixels')", timeout=WAIT_MS)
            assert "box.png" in page.eval_on_selector("#slice-image", "image => image.src")
            assert _image_loaded(page) > 0
            assert page.locator("#download-box-item").is_visible()

            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
