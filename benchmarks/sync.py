"""Mirror sync: the second, incremental sync of a large file against ``upload --dry-run``.

    python benchmarks/sync.py [-n 10000000] [--churn 0.01] [--keep DIR]

Writes a CSV of N records (36-character IDs, 5 attributes: string, int, float, date, URL)
and a second one where ``churn / 2`` of the IDs are gone and as many are new. Starts the fake
server in its own process, then runs the command line in child processes, each timed and
with its own peak RSS:

1. ``upload AUD second.csv --dry-run``: reading and validating the file, the baseline;
2. ``sync AUD first.csv --state S``: the first sync (a full replace);
3. ``sync AUD second.csv --state S``: the incremental sync, the one the goals are about:
   IDs sent == changes, requests == ceil(changes / 10,000) + at most 2, wall time at most
   2.5x the baseline, peak RSS under 1.5 GB.

Prints one JSON object with every figure, and whether each goal held.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import fake_server_process

CHILD = (
    "import resource, sys\n"
    "from batch_audience._cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def ident(i: int) -> str:
    """A 36-character, UUID-shaped ID."""
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def write_csv(path: str, ids: range | list[int]) -> None:
    """A CSV with 5 typed attributes per record."""
    with open(path, "w", buffering=1 << 20) as out:
        out.write("id,plan,int:score,float:ratio,date:joined,url:avatar\n")
        plans = ("gold", "silver", "bronze")
        for i in ids:
            out.write(
                f"{ident(i)},{plans[i % 3]},{i % 1000},{i / 7:.6f},"
                f"2024-01-{1 + i % 28:02d}T09:30:00Z,https://cdn.example.com/a/{i % 97}.png\n"
            )


def run(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One command in a child process: its wall time, peak RSS and JSON output."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    rss = next(
        int(line.split()[1]) / 1024
        for line in done.stderr.splitlines()
        if line.startswith("peak_rss_kb")
    )
    out = done.stdout.strip().splitlines()
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(rss),
        "report": json.loads(out[-1]) if out and out[-1].startswith("{") else out,
    }


def main() -> None:
    """Run the benchmark and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10_000_000, help="records in the first file")
    parser.add_argument("--churn", type=float, default=0.01, help="share of IDs gone + new")
    parser.add_argument("--keep", help="a directory to keep the files in (else a temporary one)")
    opts = parser.parse_args()
    n = opts.n
    gone = new = int(n * opts.churn / 2)
    workdir = opts.keep or tempfile.mkdtemp(prefix="sync-bench-")
    os.makedirs(workdir, exist_ok=True)
    first, second = os.path.join(workdir, "first.csv"), os.path.join(workdir, "second.csv")
    state = os.path.join(workdir, "aud.state")
    for path in (state, state + ".lock"):
        if os.path.exists(path):
            os.unlink(path)
    started = time.perf_counter()
    write_csv(first, range(n))
    write_csv(second, range(gone, n + new))
    generated = time.perf_counter() - started
    result: dict[str, Any] = {
        "records": n,
        "gone": gone,
        "new": new,
        "generate_s": round(generated, 1),
    }

    with fake_server_process() as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
        env |= {
            "BATCH_REST_KEY": fake.rest_key,
            "BATCH_PROJECT_KEY": fake.project_key,
            "BATCH_BASE_URL": fake.url,
        }
        subprocess.run(
            [sys.executable, "-m", "batch_audience", "create", "aud"], env=env, check=True
        )
        common = ["--json", "--no-progress"]
        result["upload_dry_run"] = run(["upload", "aud", second, "--dry-run", *common], env)
        result["first_sync"] = run(["sync", "aud", first, "--state", state, *common], env)
        result["second_sync"] = run(["sync", "aud", second, "--state", state, *common], env)
    report = result["second_sync"]["report"]
    changes = gone + new
    ratio = result["second_sync"]["wall_s"] / result["upload_dry_run"]["wall_s"]
    result["state_mb"] = round(os.path.getsize(state) / 1e6, 1)
    result["ratio_vs_dry_run"] = round(ratio, 2)
    result["goals"] = {
        "sent_equals_changes": report["sent"] == changes
        and report["removed"] == gone
        and report["added"] == new,
        "requests_bound": report["requests"] <= math.ceil(changes / 10_000) + 2,
        "ratio_at_most_2.5": ratio <= 2.5,
        "rss_under_1.5GB": result["second_sync"]["peak_rss_mb"] < 1536,
    }
    for step in ("first_sync", "second_sync"):
        # Keep the output short: the tokens are not figures.
        result[step]["report"].pop("tokens", None)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
