"""Type-checked, never-run usage of the public API (mypy --strict checks it)."""

from __future__ import annotations

from datetime import UTC, datetime

import batch_audience as ba


class Table:
    """Stands for any Arrow stream (pyarrow Table, DataFrame, DuckDB relation)."""

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        return object()


async def usage() -> None:
    async with ba.AudienceClient("rest", "project_x", base_url="http://127.0.0.1:1") as client:
        token: str | None = await client.create("winback", display_name="Win-back")
        info: ba.AudienceInfo = await client.view("winback", token=token)
        _ = info.nb_ids + 1
        report: ba.UploadReport = await client.add(
            "winback",
            [
                ba.Record(
                    "u", attributes={"joined": datetime.now(UTC), "avatar": ba.Url("https://x")}
                ),
                "v",
            ],
            progress=lambda p: print(p.records, p.total),
            concurrency=2,
        )
        columnar: ba.UploadReport = await client.add("winback", Table())
        states = await client.wait_applied("winback", report.tokens + columnar.tokens, timeout=60)
        _done: bool = all(
            s in (ba.IndexingState.APPLIED, ba.IndexingState.REPLACED) for s in states.values()
        )
        synced: ba.SyncReport = await client.sync(
            "winback", ["u", "v"], state="winback.state", dry_run=True
        )
        _changes: int = synced.added + synced.changed + synced.removed
        async for audience in client.list(page_size=50):
            _name: str = audience.name
    async with ba.CustomAudienceClient("app", "rest", version="1.1") as v1:
        await v1.replace("vip", [ba.Record("i", tags=["vip"])])
    async with ba.AudienceClient("rest", "project_x", max_ids_per_second=2_000) as paced:
        throttled = await paced.add("winback", ["w"], progress=lambda p: print(p.throttled, p.rate))
        _429s: int = throttled.throttled
        _rate: float | None = throttled.rate
    capped = ba.CustomAudienceClient("app", "rest", max_ids_per_second=500.0)
    async with capped, capped.writer("vip") as writer:
        await writer.add("i")
        flushed: ba.FlushResult = await writer.flush()
        _refused: int = flushed.throttled
