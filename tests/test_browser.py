"""The web page in a real headless Chromium: pick a sentiment, click Generate, see reviews of it."""

import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium installed (Debian: apt-get install chromium)", allow_module_level=True)

from reviewgan import ReviewGAN  # noqa: E402
from reviewgan.serve import running_server  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with running_server(ReviewGAN.from_pretrained(tiny_model_dir)) as url:
        yield url + "/"


def test_generate_in_the_browser(server, tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone-sized screen
        page.goto(server)
        page.click("label.neg")
        page.fill("#n", "4")
        page.click("#generate")
        page.wait_for_selector("#reviews li", timeout=30_000)
        items = page.query_selector_all("#reviews li")
        assert len(items) == 4
        assert all(li.get_attribute("class") == "negative" for li in items)
        assert all(li.inner_text().strip() for li in items)
        assert "negative review" in page.inner_text("#status")
        # Regenerate (no seed is sent): the page must show the reviews of the new response, in order.
        with page.expect_response("**/api/generate") as answer:
            page.click("#generate")
        again = [r["text"] for r in answer.value.json()["reviews"]]
        page.wait_for_function("document.querySelector('#status').textContent.includes('again')")
        # Each card is the review's text, then a line of metadata.
        shown = [div.inner_text().strip() for div in page.query_selector_all("#reviews li > div:first-child")]
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert len(again) == 4 and shown == [t.strip() for t in again]
