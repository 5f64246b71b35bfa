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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "shared" / "lab"


def _send_library_bodies(port: int, n: int, concurrency: int) -> None:
    """Child process: encode the lab's Parquet file with the library, untimed; send it, timed."""
    sys.path.insert(0, str(LAB))
    import labutil  # type: ignore[import-not-found]
    import limit_client  # type: ignore[import-not-found]
    import pyarrow as pa
    import pyarrow.parquet as pq
    from columnar_client import parquet_path  # type: ignore[import-not-found]

    from batch_audience._columnar import iter_columnar
    from batch_audience._intake import Intake

    file = pq.ParquetFile(parquet_path(n, 0))
    reader = pa.RecordBatchReader.from_batches(
        file.schema_arrow, file.iter_batches(batch_size=65_536)
    )
    bodies = [
        b'{"ids":' + bytes(chunk.body) + b"}"
        for chunk in iter_columnar(reader, Intake("1.1", "add"), size=10_000)
    ]
    options = argparse.Namespace(port=port, api="1.1", concurrency=concurrency, timeout=300.0)

    async def send() -> dict[str, object]:
        with labutil.Meter() as meter:
            counts = await limit_client.upload(bodies, options)
        return meter.result(n, method="library-bodies", **counts)

    labutil.emit(asyncio.run(send()))


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
    parser.add_argument("--child-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_port is not None:
        _send_library_bodies(args.child_port, args.n, args.concurrency)
        return
    sys.path.insert(0, str(LAB))
    import labutil

    n, c = str(args.n), str(args.concurrency)
    prepare = [sys.executable, "columnar_client.py", "--port", "0", "--n", n, "--prepare"]
    subprocess.run(prepare, check=True, cwd=LAB, capture_output=True)
    process, port = labutil.spawn_server(no_parse=False, loop="asyncio", idle_exit=120)
    reference = [sys.executable, "limit_client.py", "--source", "bytes", "--encoder", "orjson"]
    reference += ["--loop", "asyncio", "--concurrency", c, "--port", str(port), "--n", n]
    ours = [sys.executable, str(Path(__file__).resolve()), "--n", n, "--concurrency", c]
    ours += ["--child-port", str(port)]
    ratios = []
    try:
        for _ in range(args.pairs):
            ref, lib = _run(reference), _run(ours)
            ratios.append(lib["records_s"] / ref["records_s"])
            print(
                f"pair: reference {ref['records_s']:,} rec/s, library bodies "
                f"{lib['records_s']:,} rec/s, ratio {ratios[-1]:.2f}",
                flush=True,
            )
    finally:
        labutil.stop_server(process)
    print(f"ceiling ratio = {statistics.median(ratios):.2f} (median of {args.pairs} pairs, N={n})")


if __name__ == "__main__":
    main()
