"""Run the fake Batch server on its own until SIGINT/SIGTERM (``batch-audience fake-server``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shlex
import signal
import sys

from ._app import Chaos, FakeBatchServer

__all__ = ["run_fake_server"]


def run_fake_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    rest_key: str | None = None,
    project_key: str | None = None,
    api_key: str | None = None,
    indexing_delay: float = 0.0,  # seconds
    chaos: Chaos | None = None,
    exports: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM; print ``url:`` and the keys, one per line, first.

    Blocks. Port 0 picks a free port. Keys left as None are random. ``chaos`` starts the
    server in chaos mode (``FakeBatchServer.chaos``), e.g. for a soak test in another process.
    ``exports`` also prints shell lines after them, ``export BATCH_BASE_URL=...`` and the three
    keys as the command line reads them (``batch-audience fake-server``), and a note on stderr.
    """
    server = FakeBatchServer(
        host=host,
        port=port,
        rest_key=rest_key,
        project_key=project_key,
        api_key=api_key,
        indexing_delay=indexing_delay,
        # The process is the server's alone: no caller loop to keep clear of its work.
        threaded=False,
    )
    if chaos is not None:
        server.chaos(chaos)
    # Ctrl-C before the loop's own handler is installed still ends quietly.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(server, exports))


def shell_exports(server: FakeBatchServer) -> str:
    """The shell lines that point ``batch-audience`` at ``server`` (its URL and keys)."""
    pairs = (
        ("BATCH_BASE_URL", server.url),
        ("BATCH_REST_KEY", server.rest_key),
        ("BATCH_PROJECT_KEY", server.project_key),
        ("BATCH_API_KEY", server.api_key),
    )
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in pairs)


async def _serve(server: FakeBatchServer, exports: bool = False) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            continue
        installed.append(signum)
    try:
        async with server:
            # Park everything loaded so far out of the collector's reach: full collections
            # then only walk what serving allocates, not the whole interpreter.
            gc.freeze()
            # The ``name: value`` lines come first in both forms: scripts (the speed lab
            # among them) read them from the pipe, and a shell line would not parse there.
            lines = (
                f"url: {server.url}\n"
                f"rest_key: {server.rest_key}\n"
                f"project_key: {server.project_key}\n"
                f"api_key: {server.api_key}\n"
            )
            if exports:
                lines += shell_exports(server)
            # Whoever started us reads these lines from a pipe: flush them now.
            sys.stdout.write(lines)
            sys.stdout.flush()
            if exports:
                sys.stderr.write(
                    f"batch-audience: fake Batch server on {server.url} until Ctrl-C; the "
                    "export lines above point batch-audience at it: paste them into another shell\n"
                )
                sys.stderr.flush()
            await stop.wait()
    finally:
        gc.unfreeze()
        for signum in installed:
            loop.remove_signal_handler(signum)
