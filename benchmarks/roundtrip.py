"""Median round-trip time of one 10,000-entry add against the fake server in another process.

python benchmarks/roundtrip.py [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _common import fake_server_process

import batch_audience as ba


async def main(runs: int) -> None:
    with fake_server_process() as fake:
        async with ba.AudienceClient(fake.rest_key, fake.project_key, base_url=fake.url) as client:
            await client.create("roundtrip")
            records = [
                ba.Record(
                    f"{i:08x}-0000-4000-8000-{i:012x}", attributes={"score": i, "plan": "pro"}
                )
                for i in range(10_000)
            ]
            await client.add("roundtrip", records)  # warm-up: connection, caches
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                report = await client.add("roundtrip", records)
                times.append(time.perf_counter() - start)
                assert report.requests == 1
    ms = sorted(t * 1000 for t in times)
    print(f"10,000-entry add, {runs} runs against the fake in another process:")
    print(
        f"  median {statistics.median(ms):.1f} ms   p90 {ms[int(len(ms) * 0.9)]:.1f} ms   "
        f"min {ms[0]:.1f} ms   max {ms[-1]:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    asyncio.run(main(parser.parse_args().runs))
