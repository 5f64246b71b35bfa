"""The lab's columnar ceiling: the library's own bodies, encoded before the clock, only sent.

    python benchmarks/lab_ceiling.py --pairs 5      # needs the lab (../shared/lab) and its data

``../shared/lab/ratio.py columnar`` pairs the library against the lab's reference, which sends
gen.py's records as they are: no ``action`` key and dates without a zone. The library must
send what the API asks for (``"action":"add"`` per entry, spec §4.2; dates in UTC with
``Z``, §2.3): ~8% more bytes, one more key per entry for the server to parse. This script
measures what that costs the lab's sink alone: the same Parquet rows are turned into the
library's bodies before the clock starts (through the columnar path, untimed), then sent by
the lab's own hand-written client (``limit_client.upload``), paired with the reference as
ratio.py pairs it. The median ratio is the most the library can reach there, whatever its
own speed.

``--read-source`` adds what the caller's own source costs: the timed part also opens the
Parquet file and reads it through the same reader the lab hands the library
(``ParquetFile.iter_batches``, in a thread, at most ``--ahead`` chunks ahead of the sends), and
each body is sent once its rows are read. No check, no encoding: that is the most any client
of that reader can reach, and what is left between it and the library is the library's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

LAB = Path(__file__).resolve().parents[2] / "shared" / "lab"
_CHUNK = 10_000  # entries per body


def _bodies_file(n: int) -> Path:
    return Path(tempfile.gettempdir()) / f"batch-audience-lab-bodies-{n}.bin"


def _write_bodies(n: int) -> None:
    """Child process: the library's bodies for the lab's Parquet file, into _bodies_file(n).

    Written by a process of its own: a sending child that read the file itself would start its
    timed read with the reader's memory already faulted in (see ``--read-source``).
    """
    sys.path.insert(0, str(LAB))
    import pyarrow as pa
    import pyarrow.parquet as pq
    from columnar_client import parquet_path  # type: ignore[import-not-found]

    from batch_audience._columnar import iter_columnar
    from batch_audience._intake import Intake

    file = pq.ParquetFile(parquet_path(n, 0))
    reader = pa.RecordBatchReader.from_batches(
        file.schema_arrow, file.iter_batches(batch_size=65_536)
    )
    path = _bodies_file(n)
    with open(path.with_suffix(".tmp"), "wb") as out:
        for chunk in iter_columnar(reader, Intake("1.1", "add"), size=_CHUNK):
            body = b'{"ids":' + bytes(chunk.body) + b"}"
            out.write(struct.pack("<q", len(body)) + body)
    path.with_suffix(".tmp").replace(path)


def _send_library_bodies(port: int, n: int, concurrency: int, ahead: int | None) -> None:
    """Child process: send the library's bodies (read from _bodies_file), timed."""
    sys.path.insert(0, str(LAB))
    import labutil  # type: ignore[import-not-found]
    import limit_client  # type: ignore[import-not-found]
    from columnar_client import parquet_path

    path = parquet_path(n, 0)
    bodies = []
    with open(_bodies_file(n), "rb") as source:
        while size := source.read(8):
            bodies.append(source.read(struct.unpack("<q", size)[0]))
    options = argparse.Namespace(port=port, api="1.1", concurrency=concurrency, timeout=300.0)

    async def send() -> dict[str, object]:
        with labutil.Meter() as meter:
            if ahead is None:
                counts = await limit_client.upload(bodies, options)
            else:
                counts = await _upload(_as_read(path, bodies, ahead), options, labutil)
        return meter.result(n, method="library-bodies", **counts)

    labutil.emit(asyncio.run(send()))


async def _upload(
    bodies: AsyncIterator[bytes], options: argparse.Namespace, labutil: Any
) -> dict[str, int]:
    """limit_client.upload for bodies that arrive as they are read: the same requests."""
    import aiohttp

    method, url = labutil.url_for(options.port, options.api)
    slots = asyncio.Semaphore(options.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    counts = {"requests": 0, "bytes_sent": 0}
    connector = aiohttp.TCPConnector(limit=options.concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=labutil.HEADERS) as session:

        async def send(body: bytes) -> None:
            try:
                async with session.request(method, url, data=body) as response:
                    await response.read()
                    if response.status != 201:
                        raise RuntimeError(f"HTTP {response.status}")
            finally:
                slots.release()

        async for body in bodies:
            await slots.acquire()
            counts["requests"] += 1
            counts["bytes_sent"] += len(body)
            task = asyncio.create_task(send(body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in list(tasks):
            await task
    return counts


async def _as_read(path: Path, bodies: list[bytes], ahead: int) -> AsyncIterator[bytes]:
    """Each body once the rows it holds are read from the file, the reading in a thread."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[bytes | None] = asyncio.Queue()
    room = threading.Semaphore(ahead)  # bodies read but not yet taken by the sender

    def read() -> None:
        file = pq.ParquetFile(path)
        reader = pa.RecordBatchReader.from_batches(
            file.schema_arrow, file.iter_batches(batch_size=65_536)
        )
        rows = released = 0
        for batch in reader:
            rows += batch.num_rows
            del batch
            while released < len(bodies) and (released + 1) * _CHUNK <= rows:
                room.acquire()
                loop.call_soon_threadsafe(ready.put_nowait, bodies[released])
                released += 1
        for body in bodies[released:]:
            room.acquire()
            loop.call_soon_threadsafe(ready.put_nowait, body)
        loop.call_soon_threadsafe(ready.put_nowait, None)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    while (body := await ready.get()) is not None:
        room.release()
        yield body
    thread.join()


def _run(command: list[str]) -> dict[str, float]:
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=LAB)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, float] = json.loads(line[7:])
            return result
    raise RuntimeError(out.stderr[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--read-source",
        action="store_true",
        help="also read the Parquet file through the lab's reader, timed (see above)",
    )
    parser.add_argument("--ahead", type=int, default=10, help="bodies read ahead of the sends")
    parser.add_argument("--child-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--write-bodies", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_bodies:
        _write_bodies(args.n)
        return
    if args.child_port is not None:
        ahead = args.ahead if args.read_source else None
        _send_library_bodies(args.child_port, args.n, args.concurrency, ahead)
        return
    sys.path.insert(0, str(LAB))
    import labutil

    n, c = str(args.n), str(args.concurrency)
    prepare = [sys.executable, "columnar_client.py", "--port", "0", "--n", n, "--prepare"]
    subprocess.run(prepare, check=True, cwd=LAB, capture_output=True)
    encode = [sys.executable, str(Path(__file__).resolve()), "--n", n, "--write-bodies"]
    subprocess.run(encode, check=True, cwd=LAB, capture_output=True)
    process, port = labutil.spawn_server(no_parse=False, loop="asyncio", idle_exit=120)
    reference = [sys.executable, "limit_client.py", "--source", "bytes", "--encoder", "orjson"]
    reference += ["--loop", "asyncio", "--concurrency", c, "--port", str(port), "--n", n]
    ours = [sys.executable, str(Path(__file__).resolve()), "--n", n, "--concurrency", c]
    ours += ["--child-port", str(port), "--ahead", str(args.ahead)]
    ours += ["--read-source"] if args.read_source else []
    ratios = []
    what = " read with the source" if args.read_source else ""
    try:
        for _ in range(args.pairs):
            ref, lib = _run(reference), _run(ours)
            ratios.append(lib["records_s"] / ref["records_s"])
            print(
                f"pair: reference {ref['records_s']:,} rec/s, library bodies{what} "
                f"{lib['records_s']:,} rec/s, ratio {ratios[-1]:.2f}",
                flush=True,
            )
    finally:
        labutil.stop_server(process)
    print(f"ceiling ratio = {statistics.median(ratios):.2f} (median of {args.pairs} pairs, N={n})")


if __name__ == "__main__":
    main()
