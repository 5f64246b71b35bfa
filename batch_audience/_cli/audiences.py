"""``batch-audience create|view|list|delete``: one request each, its answer printed."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Final

from .common import EXIT_OK, AddCommand, UsageError, _opt, make_client, off_loop
from .output import Console, _count, _json, _when, info_dict, info_text


def add_parser(command: AddCommand) -> None:
    create = command("create", "create an audience")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--display-name", help="2.x: a human-readable label")
    create.add_argument("--description", help="1.x: a human-readable label")
    create.add_argument(
        "--type",
        dest="audience_type",
        metavar="TYPE",
        help="1.0: custom_ids (default) or advertising_ids",
    )

    view = command("view", "describe an audience and its indexing state")
    view.add_argument("name", metavar="NAME")
    view.add_argument("--token", help="the indexing state of this write, not the latest")

    command("list", "list every audience, newest first")

    delete = command("delete", "delete an audience", epilog=_DELETE_EPILOG)
    delete.add_argument("name", metavar="NAME")
    delete.add_argument(
        "-y", "--yes", action="store_true", help="delete without asking (needed in scripts)"
    )


_DELETE_EPILOG: Final = """\
On a terminal, delete shows the audience (its size and last update) and asks before deleting
it. Without a terminal to ask on (a script, cron, a pipe), it deletes only with --yes: without
it, it refuses with exit status 2 and sends nothing.
"""


async def cmd_create(args: argparse.Namespace, console: Console) -> int:
    """``create NAME``."""
    async with make_client(args) as client:
        token = await client.create(
            args.name,
            display_name=args.display_name,
            description=args.description,
            audience_type=args.audience_type,
        )
    if _opt(args, "json", False):
        console.out(_json({"audience": args.name, "created": True, "token": token}))
    else:
        console.out(f"created {args.name!r}")
    return EXIT_OK


async def cmd_view(args: argparse.Namespace, console: Console) -> int:
    """``view NAME``."""
    async with make_client(args) as client:
        info = await client.view(args.name, token=args.token)
    if _opt(args, "json", False):
        console.out(_json(info_dict(info)))
    else:
        for line in info_text(info):
            console.out(line)
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, console: Console) -> int:
    """``list``: every audience, newest first."""
    async with make_client(args) as client:
        audiences = [info async for info in client.list()]
    if _opt(args, "json", False):
        console.out(_json({"audiences": [info_dict(i) for i in audiences]}))
        return EXIT_OK
    rows = [("NAME", "IDS", "STATE", "TYPE", "UPDATED")]
    rows += [
        (
            i.name,
            f"{i.nb_ids:,}",
            str(i.indexing_state or "-"),
            i.type,
            _when(i.updated) or "-",
        )
        for i in audiences
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        console.out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


async def cmd_delete(args: argparse.Namespace, console: Console) -> int:
    """``delete NAME``: asks first on a terminal; elsewhere deletes only with --yes."""
    as_json = bool(_opt(args, "json", False))
    ask = not args.yes
    if ask and not sys.stdin.isatty():
        raise UsageError(
            f"refusing to delete {args.name!r} without confirmation: there is no terminal to "
            "ask on; pass --yes to delete from a script"
        )
    async with make_client(args) as client:
        if ask:
            info = await client.view(args.name)
            updated = f", updated {_when(info.updated)}" if info.updated else ""
            prompt = (
                f"delete audience {info.name!r} ({_count(info.nb_ids, 'ID')}{updated})? "
                "This cannot be undone. [y/N] "
            )
            answer = await off_loop(_ask, console, prompt)
            if answer.strip().lower() not in ("y", "yes"):
                if as_json:
                    console.out(_json({"audience": args.name, "deleted": False}))
                else:
                    console.out(f"kept {args.name!r}: not deleted")
                return EXIT_OK
        token = await client.delete(args.name)
    if as_json:
        console.out(_json({"audience": args.name, "deleted": True, "token": token}))
    else:
        console.out(f"deleted {args.name!r}")
    return EXIT_OK


def _ask(console: Console, prompt: str, *, stop: threading.Event) -> str:
    """The answer typed on the terminal (stdin), after ``prompt`` on stderr; blocking."""
    console.err(prompt, end="")
    return sys.stdin.readline()
