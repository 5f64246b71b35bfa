"""A fake Batch server for tests: all three audience API generations on 127.0.0.1.

``FakeBatchServer`` answers Custom Audience API 1.0/1.1 and Audience API 2.x routes with the
spec's validation, error bodies and indexing states, records every request, injects faults
(``fail_next``, or seeded at random with ``chaos``) and can rate-limit; see the README's
"fake server" section.
"""

from __future__ import annotations

from ._app import Chaos, FakeBatchServer, Fault, RateLimit, RecordedRequest
from ._state import FakeAudience, FakeMember, FakeToken

__all__ = [
    "Chaos",
    "FakeAudience",
    "FakeBatchServer",
    "FakeMember",
    "FakeToken",
    "Fault",
    "RateLimit",
    "RecordedRequest",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
