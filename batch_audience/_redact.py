"""The only place secrets are masked: URLs, headers and reprs rendered for people.

The REST key travels in a header, the 2.x project key in a header, and the 1.x app key
in the URL path. Every URL or header that reaches a log line, an exception or a repr is
rendered through this module; ``scrub`` is the last line of defence for text that came
from elsewhere (an aiohttp exception message, say).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["MASK", "mask", "redact_headers", "redact_url", "scrub"]

MASK: Final = "***"

SECRET_HEADERS: Final = frozenset({"authorization", "x-authorization", "x-batch-project"})

# /1.0/{APP_KEY}/custom-audience… : the segment after a 1.x version holds the app key.
_V1_KEY_SEGMENT: Final = re.compile(r"(/1\.[0-9]+/)[^/?#]+")


def mask(value: object) -> str:
    """What a secret looks like in a repr: nothing of it."""
    return MASK if value else repr(value)


def redact_url(url: str) -> str:
    """The URL with the 1.x app key segment masked (query strings are kept: they hold no key)."""
    return _V1_KEY_SEGMENT.sub(lambda m: m.group(1) + MASK, url)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of the headers with auth and project key values masked."""
    return {k: (MASK if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by the mask."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return redact_url(text)
