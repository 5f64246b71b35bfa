"""An asyncio client and batching engine for Batch.com's audience APIs."""

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
