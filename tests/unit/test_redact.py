"""Masking of keys in URLs, headers and free text."""

from __future__ import annotations

from batch_audience._redact import MASK, redact_headers, redact_url, scrub


def test_redact_url_masks_the_v1_app_key_segment() -> None:
    """The app key segment of 1.x paths is masked; the rest of the URL stays readable."""
    url = "https://api.batch.com/1.1/APPKEY123/custom-audience/vip?indexing_token=abc"
    assert (
        redact_url(url)
        == f"https://api.batch.com/1.1/{MASK}/custom-audience/vip?indexing_token=abc"
    )


def test_redact_url_leaves_v2_paths_alone() -> None:
    """2.x paths hold no key."""
    assert redact_url("/2.8/audiences/view?name=a") == "/2.8/audiences/view?name=a"


def test_redact_headers_masks_every_auth_header_whatever_its_case() -> None:
    """Authorization, X-Authorization and X-Batch-Project values are masked."""
    headers = {
        "authorization": "Bearer SECRET",
        "X-Authorization": "SECRET",
        "X-Batch-Project": "project_1",
        "Content-Type": "application/json",
    }
    assert redact_headers(headers) == {
        "authorization": MASK,
        "X-Authorization": MASK,
        "X-Batch-Project": MASK,
        "Content-Type": "application/json",
    }


def test_scrub_removes_every_secret_from_text() -> None:
    """Free text, such as an aiohttp error message, loses every known secret."""
    text = "Cannot connect to host with key SECRET and project_1 at /1.0/APP/custom-audience"
    out = scrub(text, ("SECRET", "project_1", ""))
    assert "SECRET" not in out
    assert "project_1" not in out
    assert "/1.0/***/custom-audience" in out
