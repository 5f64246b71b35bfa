"""Mirror sync: make an audience hold exactly a source, sending only what changed since the
last sync (the state file, ``_syncstate``).

One run, in order:

1. open the state (refused for another audience or project, or while another sync holds it);
2. drift check: if the last sync finished, its snapshot's size must equal the audience's
   ``nb_ids`` once indexing is APPLIED; otherwise the audience was changed elsewhere, and the
   sync stops (``full=True`` rebuilds it);
3. read the source to the end, encoding each record with the uploads' own intake into its
   wire entry (validated; nothing is sent if any record is bad), staged into DuckDB in
   batches, on the loop in slices while the previous batch is inserted in the worker thread;
4. plan, in the worker thread: deduplicate (last occurrence wins) and diff against the
   snapshot (FULL OUTER JOIN on id; a digest of each wire entry tells a changed one);
5. record "started" (the plan's IDs become dirty: unknown until a sync finishes), then send
   through the client's own uploads: removes first (the audience never exceeds its final
   size), then adds for new and changed IDs; or, for a first or full sync, one replace;
6. only when every request was acknowledged, swap in the new snapshot in one transaction.

A sync that fails or is interrupted anywhere leaves the previous snapshot plus the dirty IDs;
the next run resends every dirty ID (an add if in the source, else a remove), so it converges
whatever happened to the requests in flight. An interrupted full sync makes the next one full.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from itertools import islice
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import orjson

from ._chunker import _check_not_one_record, _iterator
from ._columnar import aiter_columnar
from ._exceptions import UnsupportedOperation, ValidationError
from ._intake import Intake
from ._models import IndexingState, Progress, ProgressCallback, Records, SyncReport
from ._syncstate import (
    DEFAULT_MEMORY_LIMIT,
    Identity,
    Plan,
    SyncDriftError,
    SyncState,
    SyncStateError,
)
from ._upload import Operation, _length, check_chunk_size, check_concurrency
from ._validate import MAX_ENTRIES, check_audience_name

if TYPE_CHECKING:
    from ._client import _BaseClient as Client

__all__ = ["SyncDriftError", "SyncStateError", "run_sync"]

T = TypeVar("T")

STAGE_BATCH: Final = 50_000  # records handed to DuckDB per insert
SLICE: Final = 1_000  # records read and encoded between two yields to the event loop
SEND_BATCH: Final = 10_000  # plan rows fetched from DuckDB per step while sending


class _Worker:
    """One thread that runs every DuckDB call of a sync, one at a time, off the event loop."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batch-sync")

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, func, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The call cannot be stopped; it finishes before anything queued after it.
            future.add_done_callback(_consume)
            raise

    async def close(self, state: SyncState | None) -> None:
        """Close the state after whatever call is under way, then stop the thread."""
        try:
            if state is not None:
                closing = asyncio.get_running_loop().run_in_executor(self._pool, state.close)
                try:
                    await asyncio.shield(closing)
                except asyncio.CancelledError:
                    # The close still runs after the call under way; the lock goes with it.
                    closing.add_done_callback(_consume)
                    raise
        finally:
            self._pool.shutdown(wait=False)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _identity(client: Client, name: str) -> Identity:
    endpoints = client._endpoints
    key = str(getattr(endpoints, "project_key", None) or getattr(endpoints, "api_key", ""))
    return Identity(
        audience=name, generation=endpoints.generation, base_url=client.base_url, key=key
    )


async def run_sync(
    client: Client,
    name: str,
    source: Records,
    *,
    state: str | os.PathLike[str],
    dry_run: bool = False,
    full: bool = False,
    wait: bool = False,
    concurrency: int,
    chunk_size: int = MAX_ENTRIES,
    progress: ProgressCallback | None = None,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> SyncReport:
    """The body of ``client.sync``; see the module docstring."""
    check_audience_name(name)
    # Checked now: the uploads would refuse them only after the state was marked started.
    check_concurrency(concurrency)
    check_chunk_size(chunk_size)
    started = time.monotonic()
    generation = client._endpoints.generation
    if isinstance(source, str | bytes | os.PathLike):
        raise ValidationError("sync takes records, not a path: pass open_records(path) for a file")
    intake = Intake(generation, "add")
    worker = _Worker()
    opened: SyncState | None = None
    sending = False
    try:
        opened = await worker.run(
            lambda: SyncState(
                state, _identity(client, name), read_only=dry_run, memory_limit=memory_limit
            )
        )
        meta = opened.meta
        if meta.synced and not (meta.unfinished or meta.needs_full or full):
            await _check_drift(client, name, meta.snapshot_count)
        await _stage(source, intake, opened, worker, name, progress, started)
        if progress is not None:
            rows = opened.rows
            progress(
                Progress(
                    audience=name,
                    operation="diff",
                    records=rows,
                    total=rows,
                    requests=0,
                    retries=0,
                    elapsed=time.monotonic() - started,
                )
            )
        plan = await worker.run(opened.plan, full)
        is_full = opened.full
        report = SyncReport(
            audience=name,
            records=plan.records,
            added=plan.added,
            changed=plan.changed,
            removed=plan.removed,
            unchanged=plan.unchanged,
            duplicates=plan.duplicates,
            full=is_full,
            resumed=meta.unfinished,
            dry_run=dry_run,
            examples=plan.examples if dry_run else {},
            requests=0,
            atomic=True,
        )
        if dry_run:
            planned = _planned_requests(plan, is_full, chunk_size)
            return attrs.evolve(
                report,
                requests=planned,
                atomic=planned <= 1,
                elapsed=time.monotonic() - started,
            )
        replace_ok = client._endpoints.supports_replace
        if is_full and not replace_ok:
            # 1.0 has no replace: a first sync is only exact if the audience is empty.
            info = await client.view(name)
            if info.nb_ids:
                raise UnsupportedOperation(
                    "sync",
                    client._endpoints.version,
                    "a full sync needs replace, which Custom Audience API 1.0 lacks; the "
                    f"audience holds {info.nb_ids:,} IDs: delete and recreate it first, "
                    "then sync again",
                )
        await worker.run(opened.mark_started)
        sending = True
        sent = await _send(
            client,
            name,
            opened,
            worker,
            plan,
            is_full,
            replace_ok,
            concurrency,
            chunk_size,
            progress,
        )
        await worker.run(opened.mark_finished)
        report = attrs.evolve(
            report,
            requests=sum(r.requests for r in sent),
            retries=sum(r.retries for r in sent),
            tokens=tuple(t for r in sent for t in r.tokens),
            atomic=sum(r.requests for r in sent) <= 1,
            elapsed=time.monotonic() - started,
        )
    except ValidationError as exc:
        if not isinstance(exc, SyncStateError) and opened is not None and not sending:
            exc.add_note("nothing was sent; the sync state is unchanged")
        raise
    finally:
        await worker.close(opened)
    if wait and report.tokens:
        states = await client.wait_applied(name, report.tokens)
        report = attrs.evolve(report, states=states)
    return report


def _planned_requests(plan: Plan, full: bool, chunk_size: int) -> int:
    if full:
        return max(1, -(-plan.records // chunk_size))
    adds = plan.added + plan.changed
    return -(-plan.removed // chunk_size) + -(-adds // chunk_size)


async def _check_drift(client: Client, name: str, expected: int) -> None:
    info = await client.view(name)
    if info.indexing_state != IndexingState.APPLIED:
        return  # nb_ids may lag behind writes still being indexed: nothing to compare
    if info.nb_ids != expected:
        raise SyncDriftError(
            f"audience {name!r} holds {info.nb_ids:,} IDs, but the last sync left "
            f"{expected:,}: it was changed by something else since. Sending only the "
            "difference would not make it equal to the source: run a full sync "
            "(full=True, or --full on the command line) to replace its members"
        )


async def _stage(
    source: Records,
    intake: Intake,
    state: SyncState,
    worker: _Worker,
    name: str,
    progress: ProgressCallback | None,
    started: float,
) -> None:
    """Read and encode the whole source into the state's staging table."""
    total = _length(source)
    encode = intake.encode
    ids: list[str] = []
    wires: list[bytes] = []
    pending: asyncio.Future[None] | None = None
    position = 0

    def report() -> None:
        if progress is not None:
            progress(
                Progress(
                    audience=name,
                    operation="read",
                    records=position,
                    total=total,
                    requests=0,
                    retries=0,
                    elapsed=time.monotonic() - started,
                )
            )

    async def flush() -> None:
        nonlocal pending, ids, wires
        if pending is not None:
            await pending
            pending = None
        if ids:
            batch_ids, batch_wires = ids, wires
            ids, wires = [], []
            # Inserted while the next batch is read: DuckDB releases the GIL as it works.
            pending = asyncio.ensure_future(worker.run(state.append, batch_ids, batch_wires))
        report()

    def take(item: object) -> None:
        nonlocal position
        rid, wire = encode(item, position)
        ids.append(rid)
        wires.append(wire)
        position += 1

    try:
        if hasattr(type(source), "__arrow_c_stream__"):
            # A columnar source: the uploads' own chunker reads, checks and encodes it off
            # the loop; its chunks are split into entries in the worker.
            async for chunk in aiter_columnar(source, intake):
                await worker.run(state.append_entries, chunk.body)
                position += chunk.count
                report()
        elif isinstance(source, AsyncIterable):
            _check_not_one_record(source)
            budget = SLICE
            async for item in source:
                take(item)
                budget -= 1
                if not budget:
                    budget = SLICE
                    if len(ids) >= STAGE_BATCH:
                        await flush()
                    else:
                        await asyncio.sleep(0)
        else:
            items = _iterator(source)  # type: ignore[arg-type]  # not an Arrow stream: above
            while True:
                before = position
                for item in islice(items, SLICE):
                    take(item)
                if len(ids) >= STAGE_BATCH:
                    await flush()
                else:
                    await asyncio.sleep(0)
                if position - before < SLICE:
                    break
        await flush()
        if pending is not None:
            await pending
            pending = None
    finally:
        if pending is not None:
            # Let an insert under way end before the state is closed; its error is not ours.
            with contextlib.suppress(BaseException):
                await pending


async def _rows(state: SyncState, worker: _Worker, what: str) -> AsyncIterator[list[str]]:
    batches = await worker.run(state.reader, what, SEND_BATCH)
    try:
        while True:
            batch = await worker.run(next, batches, None)
            if batch is None:
                return
            yield batch
    finally:
        await worker.run(batches.close)


async def _entries(state: SyncState, worker: _Worker, what: str) -> AsyncIterator[object]:
    """The plan's records as the uploads take them: ID strings, or dicts of id/attributes/tags."""
    async for batch in _rows(state, worker, what):
        if what == "remove":
            for rid in batch:
                yield rid
            continue
        for wire in batch:
            # The staged entry is the add wire entry; without its action it is a record the
            # intake turns back into the very same bytes (tests/unit/test_sync_state.py).
            record = orjson.loads(wire)
            del record["action"]
            yield record


async def _send(
    client: Client,
    name: str,
    state: SyncState,
    worker: _Worker,
    plan: Plan,
    full: bool,
    replace_ok: bool,
    concurrency: int,
    chunk_size: int,
    progress: ProgressCallback | None,
) -> list[Any]:
    """Send the plan through the client's own uploads; the reports of those that ran."""
    reports: list[Any] = []

    async def upload(operation: Operation, what: str, total: int) -> None:
        def relay(update: Progress) -> None:
            if progress is not None:
                progress(attrs.evolve(update, total=total))

        try:
            report = await client._upload(
                operation,
                name,
                _entries(state, worker, what),
                concurrency,
                relay if progress is not None else None,
                chunk_size,
                False,
                None,
            )
        except BaseException as exc:
            if isinstance(exc, Exception):
                exc.add_note(
                    f"sync of {name!r} stopped while sending; the state keeps the last "
                    "finished sync: run the same sync again to converge"
                )
            raise
        reports.append(report)

    if full:
        await upload("replace" if replace_ok else "add", "all", plan.records)
        return reports
    if plan.removed:
        await upload("remove", "remove", plan.removed)
    if plan.added or plan.changed:
        await upload("add", "add", plan.added + plan.changed)
    return reports
