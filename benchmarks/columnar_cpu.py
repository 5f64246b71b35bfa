"""The columnar path's own CPU per N rows from Parquet, nothing sent: A/B of code versions.

    python benchmarks/columnar_cpu.py -n 1000000 --rounds 8            # this checkout
    python benchmarks/columnar_cpu.py --rounds 8 old=/tmp/old new=.    # NAME=PYTHONPATH[:ENV=V]

On a machine shared with other work, wall-clock ratios move with the load; the CPU a process
spends on the same work moves much less. Each round runs every version once, in a child
process of its own, in alternating order (ABBA), on the same Parquet file (the lab's shape:
``benchmarks/columnar.py``). A child reads the file through a RecordBatchReader of 65,536-row
batches and turns it into the chunks an upload sends (``iter_columnar``'s steps, in the
calling thread), after one tiny warm-up upload (imports, DuckDB's connection): the process's
user+sys CPU, its system share, and its peak RSS. A version is a folder holding a
``batch_audience`` package (``git archive REV batch_audience | tar -x -C DIR``), put first on
the child's PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from columnar import BATCH_ROWS, write_parquet

_CHILD = r"""
import json, resource, sys
import pyarrow as pa, pyarrow.parquet as pq
from batch_audience._columnar import iter_columnar
from batch_audience._intake import Intake

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime

def chunks(reader):
    return sum(c.count for c in iter_columnar(reader, Intake("1.1", "add"), size=10_000))

chunks(pa.table({"id": ["warm"], "tags": [["a"]]}).to_reader())
file = pq.ParquetFile(sys.argv[1])
batches = file.iter_batches(batch_size=int(sys.argv[2]))
reader = pa.RecordBatchReader.from_batches(file.schema_arrow, batches)
(c0, s0) = cpu()
rows = chunks(reader)
(c1, s1) = cpu()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": rows, "cpu": c1 - c0, "sys": s1 - s0, "rss": peak}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=1_000_000, help="rows")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("versions", nargs="*", help="NAME=PYTHONPATH[:ENV=VALUE,...] (default: this)")
    a = p.parse_args()
    versions = []
    for spec in a.versions or ["this="]:
        name, _, rest = spec.partition("=")
        path, _, env = rest.partition(":")
        folder = os.path.abspath(path) if path else ""
        versions.append((name, folder, dict(kv.split("=", 1) for kv in env.split(",") if kv)))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.parquet"
        write_parquet(data, a.n)
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in versions}
        for round_ in range(a.rounds):
            order = versions if round_ % 2 == 0 else versions[::-1]
            for name, path, extra in order:
                env = dict(os.environ, **extra)
                if path:
                    env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(data), str(BATCH_ROWS)],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=False,
                    cwd=tmp,
                )
                if out.returncode:
                    sys.exit(f"{name}: {out.stderr[-2000:]}")
                results[name].append(json.loads(out.stdout.splitlines()[-1]))
            shown = " | ".join(
                f"{name} {results[name][-1]['cpu']:.3f} s" for name, _, _ in versions
            )
            print(f"round {round_ + 1}: {shown} (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n{a.n:,} rows from Parquet, process CPU (user+sys), medians of {a.rounds} rounds\n")
    print("| version | CPU s | system s | peak RSS MB |")
    print("|---|---|---|---|")
    for name, _, _ in versions:
        runs = results[name]
        cpu = statistics.median(r["cpu"] for r in runs)
        system = statistics.median(r["sys"] for r in runs)
        rss = max(r["rss"] for r in runs)
        print(f"| {name} | {cpu:.3f} | {system:.3f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
