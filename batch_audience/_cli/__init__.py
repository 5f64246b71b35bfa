"""The ``batch-audience`` command: upload files, inspect audiences, run the fake server or a demo.

Synopsis (global options may come before or after the command)::

    batch-audience [--api 2|1.0|1.1] [--base-url URL] [--rest-key K] [--project-key K]
                   [--api-key K] [--api-version V] [--json] [-v] [--no-progress] COMMAND
    batch-audience upload NAME FILE|- [--format csv|ndjson|parquet] [--mode add|remove|replace]
                   [--wait] [--concurrency N] [--chunk-size N] [--dry-run] [--checkpoint F]
    batch-audience create NAME [--display-name D] [--description D] [--type T]
    batch-audience view NAME [--token T]
    batch-audience list
    batch-audience delete NAME
    batch-audience fake-server [--host H] [--port N] [--indexing-delay S]
    batch-audience demo [--records N] [--concurrency N]
    batch-audience sync NAME FILE|- --state PATH [--format csv|ndjson|parquet] [--dry-run] [--full]
                   [--wait] [--concurrency N] [--chunk-size N]

The input formats are described in ``_sources`` and in ``batch-audience upload --help``.
Exit status: 0 on success, 1 when the API or the network failed, 2 on bad input or usage
(a bad file, a refused checkpoint, a missing key), 130 when interrupted. Keys come from the
environment (``BATCH_REST_KEY``, ``BATCH_PROJECT_KEY``, ``BATCH_API_KEY``) or from flags, and
are never printed: every line this command writes is scrubbed of them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import platform
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

from .._exceptions import BatchAudienceError, UnsupportedOperation, ValidationError
from . import audiences, demo, doctor, fake_server, members, sync, upload
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    UsageError,
    _argv_secrets,
    _common_options,
    _opt,
    _Parser,
    _secrets,
)
from .output import Console, _LogHandler

__all__ = ["main"]

_DESCRIPTION: Final = """\
Upload CSV, NDJSON or Parquet files to Batch.com audiences, inspect and delete audiences, run
the bundled fake Batch server, or see a demo. Keys come from BATCH_REST_KEY, BATCH_PROJECT_KEY
(Audience API 2.x) and BATCH_API_KEY (Custom Audience API 1.x, the app key), or from flags
(flags show up in process lists: prefer the environment). Keys are never printed.

exit status: 0 success, 1 API or network failure, 2 bad input or usage, 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``batch-audience``."""
    common = _common_options()
    parser = _Parser(
        prog=PROG,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"{PROG} {_version()} (Python {platform.python_version()})",
        help="print the version and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=help,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )

    upload.add_parser(command)
    audiences.add_parser(command)
    fake_server.add_parser(command)
    members.add_parser(command)
    sync.add_parser(command)
    doctor.add_parser(command)
    demo.add_parser(command)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("batch-audience")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        return "(not installed)"


_ASYNC_COMMANDS: Final[
    dict[str, Callable[[argparse.Namespace, Console], Coroutine[Any, Any, int]]]
] = {
    "upload": upload.cmd_upload,
    "create": audiences.cmd_create,
    "view": audiences.cmd_view,
    "list": audiences.cmd_list,
    "delete": audiences.cmd_delete,
    "demo": demo.cmd_demo,
    "sync": sync.cmd_sync,
    "members": members.cmd_members,
    "doctor": doctor.cmd_doctor,
}


# -- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``batch-audience``; return its exit status."""
    parser = build_parser()
    given = sys.argv[1:] if argv is None else argv
    # Even a usage error (a bad value next to a key) must not echo the key.
    _Parser.secrets = _argv_secrets(given)
    _Parser.json_errors = "--json" in given
    args = parser.parse_args(argv)
    console = Console(_secrets(args), json_errors=bool(_opt(args, "json", False)))
    logger = logging.getLogger("batch_audience")
    handler: logging.Handler | None = None
    if _opt(args, "verbose", False):
        handler = _LogHandler(console)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        return _run(args, console)
    finally:
        if handler is not None:
            logger.removeHandler(handler)


def _run(args: argparse.Namespace, console: Console) -> int:
    try:
        if args.command == "fake-server":
            return fake_server.cmd_fake_server(args, console)
        return asyncio.run(_ASYNC_COMMANDS[args.command](args, console))
    except KeyboardInterrupt:
        checkpoint = _opt(args, "checkpoint", None)
        hint = f": run the same command again to resume from {checkpoint!r}" if checkpoint else ""
        if _opt(args, "state", None):
            hint = ": the state keeps the last finished sync; run the same command again"
        console.error("interrupted" + hint, kind="Interrupted", prefix=f"{PROG}: ")
        return EXIT_INTERRUPTED
    except (UsageError, ValidationError, UnsupportedOperation) as exc:
        console.error(exc)
        return EXIT_USAGE
    except BatchAudienceError as exc:
        console.error(exc)
        return EXIT_FAILED
    except OSError as exc:
        console.error(exc)
        return EXIT_USAGE
    except Exception as exc:
        console.err(f"{PROG}: internal error, please report it:")
        console.err(traceback.format_exc().rstrip())
        console.json_error(exc)
        return EXIT_FAILED
