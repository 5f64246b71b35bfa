"""Columnar upload: a Parquet file through ``client.add(reader)`` vs the same rows as records.

    python benchmarks/columnar.py -n 1000000        # needs the data extra: pip install -e '.[data]'

Writes N rows once (36-char IDs, 5 attributes: int, float, str, int, timestamp with zone; 2
tags) to a Parquet file in a temporary folder, then, each in a child process against the fake
server in another process (Custom Audience API 1.1): ``columnar`` opens the file and uploads a
``RecordBatchReader`` over it; ``records`` reads the same file into Python dicts, row by row,
and uploads those. Prints records/s, client CPU, peak RSS and event-loop lag (how late a 1 ms
sleep wakes up). The fake server parses and applies every entry and is often the bottleneck:
for the client's own speed, see ``python ../shared/lab/ratio.py columnar`` (a sink, not a fake).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import LoopLag, cpu_seconds, fake_server_process, peak_rss_mb, run_in_child

BATCH_ROWS = 65_536  # rows per Parquet batch read


def write_parquet(path: Path, n: int) -> None:
    """N deterministic rows, written 100,000 at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("id", pa.string()),
            ("age", pa.int64()),
            ("score", pa.float64()),
            ("city", pa.string()),
            ("premium", pa.int64()),
            ("last_purchase", pa.timestamp("s", tz="UTC")),
            ("tags", pa.list_(pa.string())),
        ]
    )
    start = datetime(2021, 1, 1, tzinfo=UTC)
    with pq.ParquetWriter(path, schema) as writer:
        for first in range(0, n, 100_000):
            rows = range(first, min(n, first + 100_000))
            writer.write_table(
                pa.table(
                    {
                        "id": [str(uuid.UUID(int=i * 7919 + 1, version=4)) for i in rows],
                        "age": [13 + i % 77 for i in rows],
                        "score": [(i % 100_000) / 100 for i in rows],
                        "city": [f"city-{i % 64}" for i in rows],
                        "premium": [i % 2 for i in rows],
                        "last_purchase": [start + timedelta(seconds=i * 37) for i in rows],
                        "tags": [[f"tag-{i % 32}", f"tag-{(i + 5) % 32}"] for i in rows],
                    },
                    schema=schema,
                )
            )


def records(path: Path) -> Iterator[dict[str, Any]]:
    """The file's rows as record dicts, one batch at a time (what a user would write)."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            rid = row.pop("id")
            tags = row.pop("tags")
            yield {"id": rid, "attributes": row, "tags": tags}


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import batch_audience as ba

    path = Path(opts.path)
    async with ba.CustomAudienceClient(
        opts.api_key, opts.rest_key, version="1.1", base_url=opts.url
    ) as client:
        await client.create(opts.audience)
        lag = LoopLag()
        lag.start()
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        source: object
        if opts.only == "columnar":
            file = pq.ParquetFile(path)
            source = pa.RecordBatchReader.from_batches(
                file.schema_arrow, file.iter_batches(batch_size=BATCH_ROWS)
            )
        else:
            source = records(path)
        report = await client.add(opts.audience, source, concurrency=opts.concurrency)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        await lag.stop()
        assert report.records == opts.n, report
    return {"elapsed": elapsed, "cpu": cpu, "peak_rss_mb": peak_rss_mb(), **lag.summary()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=1_000_000, help="rows (default 1,000,000)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--uploaders", default="columnar,records")
    parser.add_argument("--only", choices=["columnar", "records"], help=argparse.SUPPRESS)
    for hidden in ("url", "rest_key", "api_key", "audience", "path"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.only:
        gc.collect()
        print(json.dumps(asyncio.run(run(opts))))
        return
    names = opts.uploaders.split(",")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.parquet"
        write_parquet(path, opts.n)
        with fake_server_process() as fake:
            for name in names:
                args = ["-n", str(opts.n), "--concurrency", str(opts.concurrency), "--only", name]
                args += ["--url", fake.url, "--rest_key", fake.rest_key, "--api_key", fake.api_key]
                args += ["--audience", f"bench_{name}_{int(time.time())}", "--path", str(path)]
                results[name] = run_in_child(__file__, args)
                print(f"  {name}: done in {results[name]['elapsed']:.1f} s", file=sys.stderr)
    print(f"\n{opts.n:,} rows from Parquet, concurrency {opts.concurrency}\n")
    print("| source | records/s | client CPU s | peak RSS MB | loop lag p99 / max ms |")
    print("|---|---|---|---|---|")
    for name in names:
        r = results[name]
        print(
            f"| {name} | {opts.n / r['elapsed']:,.0f} | {r['cpu']:.1f} | {r['peak_rss_mb']:.0f} "
            f"| {r['lag_p99_ms']:.1f} / {r['lag_max_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
