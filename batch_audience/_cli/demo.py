"""``batch-audience demo``: a fake server in this process, generated records, indexing, a report."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

import attrs

from .._client import AudienceClient
from .._models import UploadReport
from .._upload import DEFAULT_CONCURRENCY
from .common import EXIT_OK, AddCommand, _opt, _positive_int
from .output import (
    Console,
    ProgressBar,
    _bar_enabled,
    _heartbeat,
    _json,
    info_dict,
    info_text,
    report_dict,
    report_text,
)

DEMO_RECORDS: Final = 1_000_000


def add_parser(command: AddCommand) -> None:
    demo = command(
        "demo",
        "start a fake Batch server in this process, upload generated records, wait, report",
    )
    demo.add_argument(
        "--records",
        type=_positive_int,
        default=DEMO_RECORDS,
        metavar="N",
        help=f"records to upload (default: {DEMO_RECORDS:,})",
    )
    demo.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight (default: {DEFAULT_CONCURRENCY})",
    )


class DemoRecords:
    """``count`` generated records with a few attributes; sized, so the bar shows an ETA."""

    PLANS: Final = ("free", "pro", "team")

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # A thousand attribute mappings, shared: the validator builds each entry's own copy,
        # so sharing is safe, and the generator stays cheap next to the upload it feeds.
        days = [datetime(2024, 1, 1 + d, 9, 30, tzinfo=UTC) for d in range(28)]
        variants = [
            {"plan": self.PLANS[k % 3], "score": k, "joined": days[k % 28]} for k in range(1000)
        ]
        for i in range(self.count):
            yield {"id": f"user-{i:07d}", "attributes": variants[i % 1000]}


async def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """``demo``: a fake server in this process, N generated records, indexing, a report."""
    from ..testing import FakeBatchServer

    as_json = bool(_opt(args, "json", False))
    started = time.monotonic()
    async with (
        FakeBatchServer() as server,
        AudienceClient(server.rest_key, server.project_key, base_url=server.url) as client,
    ):
        if not as_json:
            console.out(f"fake Batch server (in this process) on {server.url}")
        await client.create("demo", display_name="batch-audience demo")
        bar = ProgressBar(
            console,
            enabled=_bar_enabled(args),
            heartbeat=_heartbeat(args),
            desc="demo",
            total=args.records,
        )
        try:
            report = await client.add(
                "demo",
                DemoRecords(args.records),
                concurrency=args.concurrency,
                progress=bar.progress,
            )
        finally:
            bar.close()
        waited = time.monotonic()
        states = await client.wait_applied("demo", report.tokens)
        report = _with_states(report, states)
        waited = time.monotonic() - waited
        info = await client.view("demo")
    total = time.monotonic() - started
    if as_json:
        console.out(
            _json(
                {
                    "report": report_dict(report),
                    "audience": info_dict(info),
                    "indexing_wait": round(waited, 3),
                    "wall_time": round(total, 3),
                }
            )
        )
        return EXIT_OK
    for line in report_text(report):
        console.out(line)
    console.out(f"  waited {waited:.2f} s for indexing")
    console.out("audience:")
    for line in info_text(info):
        console.out(f"  {line}")
    console.out(f"demo finished in {total:.1f} s")
    return EXIT_OK


def _with_states(report: UploadReport, states: Any) -> UploadReport:
    return attrs.evolve(report, states=states)
