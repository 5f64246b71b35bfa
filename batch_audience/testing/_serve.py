"""Run the fake Batch server on its own until SIGINT/SIGTERM (``batch-audience fake-server``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
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
) -> None:
    """Serve until SIGINT or SIGTERM; print ``url:`` and the keys, one per line, first.

    Blocks. Port 0 picks a free port. Keys left as None are random. ``chaos`` starts the
    server in chaos mode (``FakeBatchServer.chaos``), e.g. for a soak test in another process.
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
        asyncio.run(_serve(server))


async def _serve(server: FakeBatchServer) -> None:
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
            lines = (
                f"url: {server.url}\n"
                f"rest_key: {server.rest_key}\n"
                f"project_key: {server.project_key}\n"
                f"api_key: {server.api_key}\n"
            )
            # Whoever started us reads these lines from a pipe: flush them now.
            sys.stdout.write(lines)
            sys.stdout.flush()
            await stop.wait()
    finally:
        gc.unfreeze()
        for signum in installed:
            loop.remove_signal_handler(signum)
