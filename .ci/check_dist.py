"""Check the built sdist and wheel: every package file inside, nothing foreign, honest metadata.

Usage: python .ci/check_dist.py CHECKOUT SDIST WHEEL VERSION... (the tested CPython versions)

A file that the checkout has but the wheel lacks would pass every test run on the checkout and
break every user's install: each tracked file under batch_audience/ must be in both artefacts.
The metadata must say what CI tests: Requires-Python from the oldest version, and exactly the
tested versions as classifiers. A package without C sources must give one pure wheel.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

PACKAGE = "batch_audience"


def main(checkout: str, sdist: str, wheel: str, versions: list[str]) -> int:
    """Print each problem found; return 1 if any."""
    listed = subprocess.run(
        ["git", "-C", checkout, "ls-files", "-z", PACKAGE],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    tracked = {
        path
        for path in listed.split("\0")
        if path and (Path(checkout) / path).is_file() and not path.endswith(".c")
    }
    problems: list[str] = []

    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        dist_info = next(
            n.split("/")[0] for n in in_wheel if n.split("/")[0].endswith(".dist-info")
        )
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    problems += [f"wheel lacks {path}" for path in sorted(tracked - in_wheel)]
    foreign = sorted(
        n for n in in_wheel if not n.startswith((f"{PACKAGE}/", f"{dist_info}/")) or "/tests/" in n
    )
    problems += [f"wheel holds a file outside the package: {name}" for name in foreign]
    if "batch-audience = batch_audience._cli:main" not in entry_points:
        problems.append("wheel lacks the batch-audience console script")

    with tarfile.open(sdist) as archive:
        root = archive.getnames()[0].split("/")[0]
        in_sdist = {name.removeprefix(root + "/") for name in archive.getnames()}
    problems += [f"sdist lacks {path}" for path in sorted(tracked - in_sdist)]
    for needed in ("pyproject.toml", "README.md"):
        if needed not in in_sdist:
            problems.append(f"sdist lacks {needed}")

    wanted = f">={versions[0]}"
    if metadata["Requires-Python"] != wanted:
        problems.append(f"Requires-Python is {metadata['Requires-Python']!r}, not {wanted!r}")
    prefix = "Programming Language :: Python :: "
    claimed = sorted(
        c.removeprefix(prefix)
        for c in metadata.get_all("Classifier") or []
        if c.startswith(prefix) and c.removeprefix(prefix)[:1].isdigit() and "." in c
    )
    if claimed != sorted(versions):
        problems.append(f"classifiers claim Python {claimed}, CI tests {sorted(versions)}")

    has_c = any(Path(checkout, PACKAGE).rglob("*.c"))
    name = Path(wheel).name
    if not has_c and not name.endswith("-py3-none-any.whl"):
        problems.append(f"a pure Python package gave a platform wheel: {name}")
    print(
        f"{Path(sdist).name}: {len(in_sdist)} files; {name}: {len(in_wheel)} files; "
        f"{len(tracked)} package files checked; Requires-Python {metadata['Requires-Python']}; "
        f"classifiers {', '.join(claimed)}"
    )
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
