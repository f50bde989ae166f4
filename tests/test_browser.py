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


def test_rewrite_tab_in_the_browser(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(server)
        assert not page.is_visible("#rewrite-form")
        page.click("#tab-rewrite")
        assert page.is_visible("#rewrite-form") and not page.is_visible("#form")
        page.fill("#source", "the movie was wonderful and i found the cast brilliant!")
        page.click("label.pos:has(input[name=to])")
        with page.expect_response("**/api/rewrite") as answer:
            page.click("#rewrite")
        data = answer.value.json()
        page.wait_for_selector("#rewritten:not([hidden])", timeout=30_000)
        assert data["to"] == "positive"
        assert page.inner_text("#rewritten-text").strip() == data["text"].strip()
        assert "→ positive" in page.inner_text("#rewritten-meta")
        assert page.get_attribute("#rewritten", "class") == "positive"
        # an empty review: the page shows the API's error and no stale rewrite
        page.fill("#source", "")
        page.click("#rewrite")
        page.wait_for_function("document.querySelector('#rewrite-status').textContent.startsWith('Error')")
        assert "empty" in page.inner_text("#rewrite-status") and not page.is_visible("#rewritten")
        browser.close()
