"""Data the library hands to and gets from users: records, audience info, upload reports."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeAlias

import attrs
import cattrs

__all__ = [
    "AttributeValue",
    "AudienceInfo",
    "IndexingState",
    "Progress",
    "ProgressCallback",
    "Record",
    "SyncReport",
    "UploadReport",
    "Url",
]


class Url(str):
    """An attribute value sent as a ``url(name)`` attribute."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Url({str.__repr__(self)})"


AttributeValue: TypeAlias = str | int | float | datetime | Url | Sequence[str]


@attrs.frozen(slots=True)
class Record:
    """One ID with optional attributes and tags, as sent to an audience.

    A ``datetime`` value (timezone-aware) is sent as a ``date(name)`` attribute, a ``Url``
    value as ``url(name)``. Keys already in wire form (``"date(joined)"``) are sent as given.
    """

    id: str
    attributes: Mapping[str, AttributeValue] | None = None
    tags: Sequence[str] | None = None


class IndexingState(enum.StrEnum):
    """Where Batch is in applying a write (spec §2.4); unknown values stay plain strings.

    A state is the string it equals, and prints as one: ``{'APPLIED'}``, not
    ``{<IndexingState.APPLIED: 'APPLIED'>}``, in a set, a dict or a report.
    """

    IN_PROGRESS = "IN_PROGRESS"
    APPLIED = "APPLIED"
    REPLACED = "REPLACED"

    def __repr__(self) -> str:
        return repr(self.value)


DONE_STATES: Final = frozenset({IndexingState.APPLIED, IndexingState.REPLACED})


@attrs.frozen(kw_only=True)
class AudienceInfo:
    """An audience as view and list report it, for every API generation."""

    name: str
    type: str
    nb_ids: int = 0
    indexing_state: IndexingState | str | None = None
    created: datetime | None = None
    updated: datetime | None = None
    # 2.x calls the human-readable label display_name, 1.x calls it description.
    display_name: str | None = None
    description: str | None = None


@attrs.frozen(kw_only=True)
class UploadReport:
    """What an add, remove or replace did: counts, tokens in order, time, atomicity."""

    audience: str
    operation: str
    records: int
    requests: int
    tokens: tuple[str, ...] = ()
    retries: int = 0
    elapsed: float = 0.0  # seconds
    # True when the whole operation was one request (a replace of at most 10,000 entries).
    atomic: bool = True
    # Final indexing state of each token, filled when the upload waited for indexing.
    states: Mapping[str, IndexingState | str] | None = None
    throttled: int = 0  # write requests answered 429 (each was retried or raised)
    # The client's rate budget when the upload ended, IDs per second; None: not paced.
    rate: float | None = None

    @property
    def records_per_second(self) -> float:
        """Acknowledged records per second of elapsed time."""
        return self.records / self.elapsed if self.elapsed > 0 else 0.0


@attrs.frozen(kw_only=True)
class SyncReport:
    """What a mirror sync did (or, with ``dry_run``, would do): the diff, requests, tokens."""

    audience: str
    records: int  # distinct IDs in the source
    added: int  # IDs new since the last sync
    changed: int  # IDs whose attributes or tags changed
    removed: int  # IDs gone from the source (or left unknown by an unfinished sync)
    unchanged: int  # IDs sent nothing
    duplicates: int = 0  # records whose ID came again later in the source (the last won)
    # A replace of the whole source was sent: a first sync, full=True, or after an
    # interrupted full sync. Beyond one request it is not atomic (``atomic``).
    full: bool = False
    resumed: bool = False  # the previous sync of this state had not finished
    requests: int = 0  # sent; for a dry run, the requests the plan would take
    tokens: tuple[str, ...] = ()
    retries: int = 0
    elapsed: float = 0.0  # seconds
    atomic: bool = True  # the whole sync was (or would be) one request
    dry_run: bool = False
    # A few IDs of each kind ("added", "changed", "removed"), for dry runs.
    examples: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    # Final indexing state of each token, filled when the sync waited for indexing.
    states: Mapping[str, IndexingState | str] | None = None

    @property
    def sent(self) -> int:
        """IDs sent (or to send): the whole source for a full sync, else the changes."""
        return self.records if self.full else self.added + self.changed + self.removed


@attrs.frozen(kw_only=True)
class Progress:
    """An upload's progress, handed to ``progress=`` after each acknowledged request."""

    audience: str
    operation: str
    records: int  # records acknowledged by the server so far
    total: int | None  # records in the input, when it has a len()
    requests: int
    retries: int
    elapsed: float  # seconds since the upload started
    throttled: int = 0  # write requests answered 429 so far
    rate: float | None = None  # the client's rate budget now, IDs per second; None: not paced


class ProgressCallback(Protocol):
    """What ``progress=`` takes: a callable receiving each Progress update."""

    def __call__(self, progress: Progress, /) -> None:
        """Called after each acknowledged request; must not block."""


def parse_timestamp(value: str) -> datetime:
    """Parse 1.x zone-less (UTC) and 2.x ``Z`` timestamps into aware UTC datetimes."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _structure_state(value: Any, _: Any) -> IndexingState | str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        # Unknown states stay strings, but a number or an object is a broken answer, not a state.
        raise TypeError(f"expected a string, got {type(value).__name__}")
    try:
        return IndexingState(value)
    except ValueError:
        return str(value)


def _structure_datetime(value: Any, _: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        # str(20240102) would parse as 2024-01-02: a number is a broken answer, not a date.
        raise TypeError(f"expected an ISO-8601 string, got {type(value).__name__}")
    return parse_timestamp(value)


def _structure_str(value: Any, _: Any) -> str:
    # cattrs would call str() on anything: a number where a name belongs is a broken answer.
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _structure_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


converter: Final = cattrs.Converter(forbid_extra_keys=False)
converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook(int, _structure_int)
converter.register_structure_hook(datetime, _structure_datetime)
converter.register_structure_hook(IndexingState | str | None, _structure_state)


class ArrowStream(Protocol):
    """A columnar source: any object exporting the Arrow C stream interface."""

    def __arrow_c_stream__(self, requested_schema: object = None) -> object: ...


# What uploads take: records from a sync or async iterable, or a columnar source.
Records = Iterable[object] | AsyncIterable[object] | ArrowStream


def token_of(data: Any) -> str | None:
    """The indexing token of a write's answer; None when there is none (an empty one too)."""
    if isinstance(data, Mapping):
        token = data.get("indexing_token")
        # An empty token is no token: waiting on it would raise ValidationError.
        if isinstance(token, str) and token:
            return token
    return None
