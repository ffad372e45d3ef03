"""Every report folder has one self-contained ``report.html`` (tables, figures embedded,
report.json in full) that opens offline in a real browser and shows report.json's numbers."""

from __future__ import annotations

import json

import pytest
from conftest import chrome, run_cli


@pytest.mark.slow
def test_an_audit_page_opens_offline_with_its_numbers_and_its_images(tmp_path):
    from selenium.webdriver.common.by import By

    out = tmp_path / "audit"
    argv = ["audit", "--metric", "lipsim-nano", "--data", "mini", "--limit", "8", "--steps", "3", "--out", str(out)]
    assert run_cli([*argv, "--eps", "0.25,0.5", "--attacks", "apgd-ce"]) == 0
    report = json.loads((out / "report.json").read_text())
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page.replace("https://github.com", "")  # nothing to fetch
    browser = chrome()
    try:
        browser.get((out / "report.html").resolve().as_uri())
        text = browser.find_element(By.TAG_NAME, "body").text
        clean = report["clean"]
        assert f"{100 * clean:.1f}" in text and "lipsim-nano" in text
        images = browser.find_elements(By.TAG_NAME, "img")
        assert len(images) == 2  # robust.png, examples.png
        assert all(int(img.get_property("naturalWidth")) > 100 for img in images)  # decoded, not broken
        shown = browser.find_element(By.ID, "report-json").get_attribute("textContent")
        assert json.loads(shown) == report
    finally:
        browser.quit()


def test_markdown_tables_headings_and_code_render(tmp_path):
    from robustsim.html import markdown_to_html

    page = markdown_to_html("# Title\n\nsome `code` text\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```\nx < y\n```\n")
    assert "<h1>Title</h1>" in page and "<code>code</code>" in page
    assert "<th>a</th><th>b</th>" in page and "<td>1</td><td>2</td>" in page and "<pre>x &lt; y</pre>" in page
