"""``batch-audience fake-server``: the bundled fake Batch server, until interrupted.

It prints ``export BATCH_BASE_URL=... BATCH_REST_KEY=...`` lines on stdout, the variables
the command itself reads, so that pasting them (or ``eval``, with ``--detach``) points every
later ``batch-audience`` command at the fake. The keys are the fake's own: random, or those
given with ``--rest-key``/``--project-key``/``--api-key``. The environment's BATCH_* keys are
not read, so that a real key is never served nor printed.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from typing import Final

from .common import EXIT_FAILED, EXIT_OK, PROG, AddCommand, _non_negative_float, _opt
from .output import Console

STARTUP_TIMEOUT: Final = 30.0  # seconds a detached server has to print its address

_EPILOG: Final = """\
The server prints its URL and keys as "name: value" lines (url, rest_key, project_key,
api_key: stable, for scripts that read them), then the variables that point batch-audience at
it, as shell exports on stdout (notes go to stderr):
  export BATCH_BASE_URL=http://127.0.0.1:8080
  export BATCH_REST_KEY=...   BATCH_PROJECT_KEY=...   BATCH_API_KEY=...
Paste them into another shell, or start it in the background and set them in this one:
  eval "$(batch-audience fake-server --detach)"
Keys are random unless given with --rest-key, --project-key, --api-key (the BATCH_* variables
of the environment are not read). See an audience's members with: batch-audience members NAME.
"""


def add_parser(command: AddCommand) -> None:
    fake = command(
        "fake-server", "run the bundled fake Batch server until interrupted", epilog=_EPILOG
    )
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
    fake.add_argument(
        "--detach",
        action="store_true",
        help="start the server in the background, print its exports and return "
        "(stop it with the kill command it prints)",
    )


def cmd_fake_server(args: argparse.Namespace, console: Console) -> int:
    """``fake-server``: blocks until interrupted, printing the exports that point at it first."""
    keys = {
        "rest_key": _opt(args, "rest_key", None),
        "project_key": _opt(args, "project_key", None),
        "api_key": _opt(args, "api_key", None),
    }
    if args.detach:
        return _detach(args, console, keys)
    from ..testing._serve import run_fake_server

    with contextlib.suppress(KeyboardInterrupt):
        run_fake_server(
            host=args.host,
            port=args.port,
            indexing_delay=args.indexing_delay,
            exports=True,
            **keys,
        )
    return EXIT_OK


def _detach(args: argparse.Namespace, console: Console, keys: dict[str, str | None]) -> int:
    """Start ``fake-server`` in a process of its own session; print its exports once it serves."""
    argv = [
        sys.executable,
        "-m",
        "batch_audience",
        "fake-server",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--indexing-delay",
        repr(args.indexing_delay),
    ]
    for name, value in keys.items():
        if value:
            argv += ["--" + name.replace("_", "-"), value]
    # Its own session: a Ctrl-C in this terminal later does not stop it; its stdout is ours to
    # read only until it serves, and nothing else of it may hold the caller's pipe (eval).
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    assert process.stdout is not None
    exports: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while len(exports) < 4 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("export "):
            exports.append(line)
    process.stdout.close()
    if len(exports) < 4:
        process.kill()
        process.wait()
        console.err(
            f"{PROG}: error: the fake server did not start "
            "(run batch-audience fake-server without --detach to see why)"
        )
        return EXIT_FAILED
    # The fake's own keys, printed on purpose: the console would mask those given as flags.
    sys.stdout.write("".join(exports))
    sys.stdout.flush()
    url = exports[0].strip().partition("=")[2]
    console.err(
        f"{PROG}: fake Batch server on {url} in the background (pid {process.pid}); "
        f"stop it with: kill {process.pid}"
    )
    return EXIT_OK
