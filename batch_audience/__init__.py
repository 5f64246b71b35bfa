"""An asyncio client and batching engine for Batch.com's audience APIs.

Everything public is imported from here; the modules behind it are private and each has one
role. The clients (``_client``: ``AudienceClient`` for Audience API 2.x,
``CustomAudienceClient`` for Custom Audience API 1.0/1.1) are facades over the rest.
``_session`` is the only code that does I/O: one aiohttp session, auth per generation,
timeouts, retries that honour Retry-After within a deadline, and the translation of every
transport error; ``_endpoints`` builds each generation's routes and bodies. Bulk uploads and
the writer share one pipeline: ``_intake`` turns each record into its wire JSON (the rules
themselves live in ``_validate``, the authority, with a fast path compiled per record shape),
``_chunker`` is the batcher that seals at most 10,000 encoded entries into a chunk (lazily,
yielding to the loop), and ``_sender`` writes sealed chunks through the session with bounded
concurrency, per-ID order, in-order acknowledgements and the client's rate budget.
``_upload`` runs ``add``/``remove``/``replace`` on that pipeline (the replace-first rule,
reports, progress); ``_writer`` is the buffered writer for event consumers (size/age flushes,
backpressure, drain) on the same intake and sender; ``_poller`` waits for indexing tokens;
``_checkpoint`` makes uploads resumable; ``_sync`` mirrors a source onto an audience by
sending only the difference from the last sync, whose snapshot ``_syncstate`` keeps in a
DuckDB file; ``_sources`` reads CSV, NDJSON and Parquet files; ``_columnar`` (a package:
``schema``, ``checks``, ``encode``, ``ids``, ``stream``) reads columnar sources (the Arrow C
stream: tables, DataFrames, Parquet) batch by batch, validates each column at the boundary,
checks the rows with pyarrow's kernels and has DuckDB write their chunks, in a worker thread.
Data flows one way, sources -> ``_intake`` or ``_columnar`` -> ``_chunker`` -> ``_sender``
-> ``_session``, with no import circle: a stage knows nothing of the sources that feed it
(``_chunker`` never imports ``_columnar``, ``_columnar`` never ``_sources``), and ``_upload``
and ``_sync`` pick the path of each source. Data
classes are in ``_models``, policies in ``_config``, the error tree in ``_exceptions``, key
masking in ``_redact``, optional OpenTelemetry spans in ``_tracing``, the command line in
``_cli``. ``batch_audience.testing`` is the fake Batch server for your own tests.
"""

import contextlib as _contextlib
from typing import Any as _Any

import attrs as _attrs

from ._checkpoint import CheckpointError, file_fingerprint, upload_with_checkpoint
from ._client import AudienceClient, CustomAudienceClient
from ._config import Limits, PollPolicy, RetryPolicy, Timeouts
from ._exceptions import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    BatchAudienceError,
    ClientClosedError,
    ConnectError,
    ForbiddenError,
    IndexingTimeout,
    MaintenanceError,
    NotFoundError,
    RateLimitError,
    RequestTimeout,
    ServerError,
    TransportError,
    UnsupportedOperation,
    ValidationError,
)
from ._models import (
    AudienceInfo,
    IndexingState,
    Progress,
    ProgressCallback,
    Record,
    SyncReport,
    UploadReport,
    Url,
)
from ._sources import SourceError, open_records
from ._syncstate import SyncDriftError, SyncStateError
from ._writer import (
    AudienceWriter,
    DrainTimeout,
    FlushResult,
    ResendResult,
    WriterEntry,
    WriterError,
)

__all__ = [
    "ApiError",
    "AudienceClient",
    "AudienceInfo",
    "AudienceWriter",
    "AuthenticationError",
    "BadRequestError",
    "BatchAudienceError",
    "CheckpointError",
    "ClientClosedError",
    "ConnectError",
    "CustomAudienceClient",
    "DrainTimeout",
    "FlushResult",
    "ForbiddenError",
    "IndexingState",
    "IndexingTimeout",
    "Limits",
    "MaintenanceError",
    "NotFoundError",
    "PollPolicy",
    "Progress",
    "ProgressCallback",
    "RateLimitError",
    "Record",
    "RequestTimeout",
    "ResendResult",
    "RetryPolicy",
    "ServerError",
    "SourceError",
    "SyncDriftError",
    "SyncReport",
    "SyncStateError",
    "Timeouts",
    "TransportError",
    "UnsupportedOperation",
    "UploadReport",
    "Url",
    "ValidationError",
    "WriterEntry",
    "WriterError",
    "file_fingerprint",
    "open_records",
    "upload_with_checkpoint",
]


def __getattr__(name: str) -> _Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("batch-audience")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Show the public home of each name in reprs and docs, not the private module. Annotations
# are resolved first: they are strings that only the defining module can evaluate (cattrs).
for _name in __all__:
    _obj = globals()[_name]
    if _attrs.has(_obj):
        _attrs.resolve_types(_obj)
    if getattr(_obj, "__module__", "").startswith("batch_audience."):
        with _contextlib.suppress(AttributeError, TypeError):
            _obj.__module__ = "batch_audience"
del _name, _obj
