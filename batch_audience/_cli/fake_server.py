"""``batch-audience fake-server``: the bundled fake Batch server, until interrupted."""

from __future__ import annotations

import argparse
import contextlib

from .common import EXIT_OK, AddCommand, _non_negative_float
from .output import Console


def add_parser(command: AddCommand) -> None:
    fake = command("fake-server", "run the bundled fake Batch server until interrupted")
    fake.add_argument(
        "--host", default="127.0.0.1", help="the address to bind (default: 127.0.0.1)"
    )
    fake.add_argument(
        "--port", type=int, default=8080, help="the port (default: 8080; 0 picks a free one)"
    )
    fake.add_argument(
        "--indexing-delay",
        type=_non_negative_float,
        default=0.0,
        metavar="S",
        help="seconds a write stays IN_PROGRESS (default: 0)",
    )


def cmd_fake_server(args: argparse.Namespace, console: Console) -> int:
    """``fake-server``: blocks until interrupted, printing its URL and keys first."""
    from ..testing._serve import run_fake_server

    with contextlib.suppress(KeyboardInterrupt):
        run_fake_server(host=args.host, port=args.port, indexing_delay=args.indexing_delay)
    return EXIT_OK
