"""Columns validated at the boundary, made plain, and judged by the record path's rules.

Three steps, each once per column:

1. ``prepare`` (each batch as it is read): every column the stream reads is validated in full
   (``Array.validate(full=True)``: offsets non-decreasing and within their buffers, list item
   offsets too, dictionary indices within the dictionary, text UTF-8) before any kernel or
   engine sees it. A column whose layout is broken (a buggy ``__arrow_c_stream__`` producer,
   ``Array.from_buffers``) raises ValidationError naming it; text that is merely not UTF-8 is
   found at its row later, and raised with that row's position and ID. Then every column is
   brought to a plain layout: views, dictionaries and ``string_view`` items become
   ``large_string`` / ``large_list<large_string>`` (pyarrow 26's ``cast`` of a list view returns
   an invalid array, and ``take`` has no kernel for ``string_view``), floats become float64.
   Any Arrow error of a column's step becomes a ValidationError naming the column.
2. ``suspects`` (each step): pyarrow compute kernels flag every row that may break a rule.
3. ``check`` gives only those rows, as records (dicts), to ``EntryEncoder``, the one authority,
   which raises the very ValidationError (position, ID, rule) the record path raises, or accepts
   the row (a flag may be cautious: an unusual ISO-8601 form, a non-ASCII tag). So the rules
   cannot drift from the record path, and clean rows never become Python objects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Final

from .._exceptions import ValidationError
from .._validate import (
    _INT_MAX,
    MAX_ARRAY_ITEMS,
    MAX_STRING_LENGTH,
    MAX_TAG_LENGTH,
    MAX_URL_LENGTH,
)
from .extra import Kernels, import_extra, rows, scalar
from .schema import ARRAY, DATE_TEXT, FLOAT, STR, TS, UINT64, URL_TEXT, Plan, is_list

__all__ = ["check", "column_errors", "plain_list", "plain_text", "prepare"]

# Python's datetime holds years 1 to 9999; a timestamp outside cannot be a date attribute.
TS_MIN_S: Final = -62_135_596_800  # 0001-01-01T00:00:00Z, seconds from the epoch
TS_MAX_S: Final = 253_402_300_800  # 10000-01-01T00:00:00Z, exclusive
PER_SECOND: Final = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# The forms of ISO-8601 that datetime.fromisoformat surely reads; anything else is handed to
# it, row by row. Day-of-month validity is checked apart (strptime).
_DATE_FORM: Final = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{3}|\.[0-9]{6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?$"
)
# _validate._PLAIN_URL in RE2 syntax (its \Z is RE2's $ without multi-line).
_URL_FORM: Final = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][!-~]*)?$"


@contextlib.contextmanager
def column_errors(pa: Any, name: str, position: int | None = None) -> Iterator[None]:
    """Turn an Arrow error of one column's step into a ValidationError naming the column.

    Out of memory and a cancelled computation stay what they are: they say nothing of the data.
    """
    try:
        yield
    except pa.ArrowException as exc:
        if isinstance(exc, MemoryError | pa.ArrowCancelled):
            raise
        raise ValidationError(
            f"column {name!r} cannot be read ({type(exc).__name__}: {exc})", position=position
        ) from exc


def column_names(plan: Plan) -> list[str]:
    """The names of the columns of a prepared batch, in its order: id, attributes, tags."""
    names = ["id", *(a.name for a in plan.attributes)]
    if plan.tags_index is not None:
        names.append("tags")
    return names


def prepare(pc: Kernels, batch: Any, plan: Plan, start: int) -> tuple[Any, frozenset[int]]:
    """The batch's columns the plan reads, validated and in a plain layout; those not UTF-8.

    Returns a record batch of columns ``c0`` (IDs), ``c1``... (each attribute of
    ``plan.attributes``), then the tags if any, and the numbers of its columns in which some
    text is not UTF-8 (their rows are found by ``check``).

    Raises:
        ValidationError: a column's layout is broken (it names the column, and ``start``, the
            stream position of the batch's first row), or another Arrow error of its step.
    """
    pa = pc._pa
    columns = []
    not_utf8 = set()
    for number, (index, name) in enumerate(zip(plan.read, column_names(plan), strict=True)):
        column = batch.column(index)
        with column_errors(pa, name, start):
            if not _valid(pc, name, column, start):
                not_utf8.add(number)
            columns.append(_plain(pa, pc, plan, number, column))
    names = [f"c{number}" for number in range(len(columns))]
    return pa.RecordBatch.from_arrays(columns, names=names), frozenset(not_utf8)


def _valid(pc: Kernels, name: str, column: Any, start: int) -> bool:
    """Validate a column at the boundary; False if only some of its text is not UTF-8.

    Arrow does not check what a C stream or ``Array.from_buffers`` hands it. A column whose
    offsets go down or past their buffers would make any kernel or engine read or write outside
    its memory (DuckDB aborts the process on it), so it is refused before any of them sees it.
    """
    pa = pc._pa
    try:
        return _layout_valid(pc, column, "row")
    except pa.ArrowInvalid as invalid:
        raise ValidationError(
            f"column {name!r} is not valid Arrow data ({invalid}): the source that made it is "
            "broken, so none of its rows from here on are read or sent",
            position=start,
        ) from None


def _layout_valid(pc: Kernels, column: Any, what: str) -> bool:
    """Raise ArrowInvalid if the layout is broken; False if only some text is not UTF-8.

    Text, lists and dictionaries (the common kinds) are checked piece by piece: offsets
    non-decreasing and within their buffers (numpy), indices within their dictionary, text
    bytes ASCII, or else UTF-8 by Arrow. ~8 ms per million rows of the lab's columns, against
    ~70 ms for ``validate(full=True)``, which also checks the whole item array behind a list
    however little of it a batch slices (a table cut into batches would be checked once per
    batch). Other layouts: ``validate(full=True)``, with the same layout seen as bytes telling
    a broken layout from text that is not UTF-8.
    """
    pa = pc._pa
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _text_valid(pa, column, what)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        column.validate()  # buffer sizes
        offsets = _offsets(column, pa.types.is_large_list(t))
        _check_offsets(pa, offsets, len(column.values), what)
        first, last = int(offsets[0]), int(offsets[-1])
        return _layout_valid(pc, column.values.slice(first, last - first), "item")
    if pa.types.is_dictionary(t):
        column.validate()  # buffer sizes
        size = len(column.dictionary)
        extremes = pc.min_max(column.indices).as_py()  # of the valid indices only
        if extremes["min"] is not None and (extremes["min"] < 0 or extremes["max"] >= size):
            raise pa.ArrowInvalid(
                f"dictionary indices from {extremes['min']} to {extremes['max']} out of 0 to "
                f"{size - 1}"
            )
        return _layout_valid(pc, column.dictionary, "dictionary value")
    try:
        column.validate(full=True)
        return True
    except pa.ArrowInvalid:
        raw = _as_bytes(pa, t)
        if raw == t:
            raise
        column.view(raw).validate(full=True)  # raises if the layout itself is broken
        return False


def _text_valid(pa: Any, column: Any, what: str) -> bool:
    """A string or large_string array's offsets and text; False if some text is not UTF-8."""
    np = import_extra("numpy")
    column.validate()  # buffer sizes
    offsets = _offsets(column, pa.types.is_large_string(column.type))
    data = column.buffers()[2]
    _check_offsets(pa, offsets, 0 if data is None else data.size, what)
    if data is None or offsets[-1] == offsets[0]:
        return True
    text = np.frombuffer(data, dtype=np.uint8)[int(offsets[0]) : int(offsets[-1])]
    if int(text.max()) < 0x80:
        return True  # ASCII is UTF-8
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _offsets(column: Any, wide: bool) -> Any:
    """An array's offsets (numpy, one more than its length), without a copy."""
    np = import_extra("numpy")
    dtype = np.int64 if wide else np.int32
    start = column.offset
    return np.frombuffer(column.buffers()[1], dtype=dtype)[start : start + len(column) + 1]


def _check_offsets(pa: Any, offsets: Any, limit: int, what: str) -> None:
    """Raise ArrowInvalid unless ``offsets`` never go down and stay within 0 to ``limit``."""
    if len(offsets) and (offsets[0] < 0 or offsets[-1] > limit):
        raise pa.ArrowInvalid(
            f"{what} offsets from {int(offsets[0])} to {int(offsets[-1])} out of 0 to {limit}"
        )
    down = offsets[1:] < offsets[:-1]
    if down.any():
        at = int(down.argmax())
        raise pa.ArrowInvalid(
            f"the offsets of {what} {at} go down, from {int(offsets[at])} to {int(offsets[at + 1])}"
        )


def _as_bytes(pa: Any, type_: Any) -> Any:
    """``type_`` with its text types as the binary types of the same layout."""
    t = pa.types
    if t.is_string(type_):
        return pa.binary()
    if t.is_large_string(type_):
        return pa.large_binary()
    if t.is_string_view(type_):
        return pa.binary_view()
    if t.is_dictionary(type_):
        return pa.dictionary(type_.index_type, _as_bytes(pa, type_.value_type), type_.ordered)
    if is_list(pa, type_):
        item = type_.value_field.with_type(_as_bytes(pa, type_.value_type))
        if t.is_list(type_):
            return pa.list_(item)
        if t.is_large_list(type_):
            return pa.large_list(item)
        if t.is_fixed_size_list(type_):
            return pa.list_(item, type_.list_size)
        if t.is_list_view(type_):
            return pa.list_view(item)
        return pa.large_list_view(item)
    return type_


def _plain(pa: Any, pc: Kernels, plan: Plan, number: int, column: Any) -> Any:
    """A validated column in the layout the checks and the writer take."""
    if number == 0:
        return plain_text(pa, pc, column)
    if number > len(plan.attributes):
        return plain_list(pa, pc, column)  # the tags
    kind = plan.attributes[number - 1].kind
    if kind in (STR, DATE_TEXT, URL_TEXT):
        return plain_text(pa, pc, column)
    if kind == ARRAY:
        return plain_list(pa, pc, column)
    if kind == FLOAT and not pa.types.is_float64(column.type):
        return pc.cast(column, pa.float64())
    return column


def plain_text(pa: Any, pc: Kernels, column: Any) -> Any:
    """A text column as string or large_string (dictionaries and views decoded)."""
    type_ = column.type
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return column
    if pa.types.is_dictionary(type_):
        # Polars' Categorical and Enum are dictionaries of string_view, which take() has no
        # kernel for: the dictionary's values are made plain first, then taken.
        return pc.take(plain_text(pa, pc, column.dictionary), column.indices)
    return pc.cast(column, pa.large_string())


def plain_list(pa: Any, pc: Kernels, column: Any) -> Any:
    """A list-of-text column as list<string> or large_list<large_string>.

    Other layouts (list views, fixed-size lists, items of string_view or dictionaries) are
    rebuilt from their items in order and their lengths: pyarrow 26's cast of a list view
    returns an invalid array (its last offset is never written).
    """
    type_ = column.type
    plain = (pa.types.is_list(type_) or pa.types.is_large_list(type_)) and (
        pa.types.is_string(type_.value_type) or pa.types.is_large_string(type_.value_type)
    )
    if plain and not _hidden_items(pa, pc, column):
        return column
    items = plain_text(pa, pc, pc.list_flatten(column))
    lengths = pc.fill_null(pc.cast(pc.list_value_length(column), pa.int64()), 0)
    ends = pc.cumulative_sum(lengths)
    offsets = pa.concat_arrays([rows(pa, [0]), ends], memory_pool=pc.pool)
    mask = pc.is_null(column) if column.null_count else None
    return pa.LargeListArray.from_arrays(offsets, items, pool=pc.pool, mask=mask)


def _hidden_items(pa: Any, pc: Kernels, column: Any) -> bool:
    """Whether a null list of a list array spans items (valid Arrow, if rare).

    ``list_flatten`` leaves those items out and ``list_parent_indices`` keeps them: the checks
    pair the two, so such a column is rebuilt with its null lists empty.
    """
    if not column.null_count:
        return False
    offsets = _offsets(column, pa.types.is_large_list(column.type))
    return len(pc.list_flatten(column)) != int(offsets[-1]) - int(offsets[0])


def suspects(
    pc: Kernels, batch: Any, plan: Plan, not_utf8: frozenset[int]
) -> tuple[list[int], dict[int, frozenset[int]]]:
    """The rows of a prepared batch that may break a rule, sorted; and, per timestamp column,
    its rows outside years 1 to 9999 (which Python cannot hold, so the rules cannot judge)."""
    pa = pc._pa
    found: list[Any] = []
    names = column_names(plan)
    ids = batch.column(0)
    with column_errors(pa, "id"):
        found.append(_mask_rows(pc, pc.fill_null(pc.equal(pc.binary_length(ids), 0), True)))
    out_of_range: dict[int, frozenset[int]] = {}
    for number, attribute in enumerate(plan.attributes, start=1):
        with column_errors(pa, attribute.name):
            column = batch.column(number)
            if attribute.kind == TS:
                bad = _timestamp_out_of_range(pa, pc, column, attribute.unit)
                if bad is not None:
                    outside = _mask_rows(pc, bad)
                    out_of_range[number] = frozenset(outside.to_pylist())
                    found.append(outside)
            else:
                found.extend(_attribute_rows(pa, pc, attribute.kind, column))
    if plan.tags_index is not None:
        with column_errors(pa, "tags"):
            found.append(_tag_rows(pa, pc, batch.column(len(names) - 1)))
    for number in not_utf8:
        with column_errors(pa, names[number]):
            found.append(_first_not_utf8(pa, pc, batch.column(number)))
    flagged: set[int] = set()
    for rows_found in found:
        if rows_found is not None and len(rows_found):
            flagged.update(rows_found.to_pylist())
    return sorted(flagged), out_of_range


def _attribute_rows(pa: Any, pc: Kernels, kind: str, column: Any) -> list[Any]:
    """The rows of an attribute column (plain layout) that may break its kind's rules."""
    found: list[Any] = []
    if kind == STR:
        if _any(pc, pc.greater(pc.binary_length(column), MAX_STRING_LENGTH)):
            found.append(_mask_rows(pc, pc.greater(pc.utf8_length(column), MAX_STRING_LENGTH)))
    elif kind == DATE_TEXT:
        form = pc.match_substring_regex(column, _DATE_FORM)
        # strptime rolls 02-30 over to 03-02: a real day prints back as itself.
        day_text = pc.utf8_slice_codeunits(column, 0, 10)
        day = pc.strptime(day_text, format="%Y-%m-%d", unit="s", error_is_null=True)
        real_day = pc.equal(pc.strftime(day, format="%Y-%m-%d"), day_text)
        fine = pc.and_kleene(
            pc.and_kleene(form, real_day), pc.invert(pc.starts_with(column, "0000"))
        )
        found.append(_mask_rows(pc, pc.and_(pc.is_valid(column), pc.invert(fine))))
    elif kind == URL_TEXT:
        fine = pc.and_(
            pc.less_equal(pc.binary_length(column), MAX_URL_LENGTH),
            pc.match_substring_regex(column, _URL_FORM),
        )
        found.append(_mask_rows(pc, pc.and_(pc.is_valid(column), pc.invert(fine))))
    elif kind == UINT64:
        found.append(_mask_rows(pc, pc.greater(column, scalar(pc._pa, _INT_MAX, pa.uint64()))))
    elif kind == FLOAT:
        found.append(_mask_rows(pc, pc.invert(pc.is_finite(column))))
    elif kind == ARRAY:
        found.append(_mask_rows(pc, pc.greater(pc.list_value_length(column), MAX_ARRAY_ITEMS)))
        items = pc.list_flatten(column)
        bad = pc.fill_null(pc.greater(pc.binary_length(items), MAX_STRING_LENGTH), True)
        if _any(pc, bad):
            found.append(pc.unique(pc.filter(pc.list_parent_indices(column), bad)))
    return found


def _tag_rows(pa: Any, pc: Kernels, tags: Any) -> Any:
    """Rows whose tags may break the tag rule: empty, long, null, non-ASCII or uppercase."""
    items = pc.list_flatten(tags)
    if _clean_tags(pa, items):
        return None
    lengths = pc.binary_length(items)
    bad = pc.or_(
        pc.or_(pc.equal(lengths, 0), pc.greater(lengths, MAX_TAG_LENGTH)),
        # Non-ASCII tags go to EntryEncoder: str.lower() is the rule, not Arrow's case tables.
        pc.or_(pc.invert(pc.string_is_ascii(items)), pc.not_equal(pc.ascii_lower(items), items)),
    )
    bad = pc.fill_null(bad, True)
    if not _any(pc, bad):
        return None
    return pc.unique(pc.filter(pc.list_parent_indices(tags), bad))


def _clean_tags(pa: Any, items: Any) -> bool:
    """Whether every tag surely keeps the rule: 1 to 64 ASCII characters, none uppercase.

    A few numpy passes over the items' offsets and bytes: ~8 ms per million rows of two tags,
    against ~70 ms for the kernels that find the rows (run only when this says no).
    """
    if items.null_count:
        return False
    np = import_extra("numpy")
    offsets = _offsets(items, pa.types.is_large_string(items.type))
    if len(offsets) < 2:
        return True
    lengths = offsets[1:] - offsets[:-1]
    if lengths.min() < 1 or lengths.max() > MAX_TAG_LENGTH:
        return False
    text = np.frombuffer(items.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    # ASCII, and no byte from A to Z (bytes below A wrap around to 191 and above).
    return int(text.max()) < 0x80 and not bool(((text - np.uint8(ord("A"))) < 26).any())


def _first_not_utf8(pa: Any, pc: Kernels, column: Any) -> Any:
    """The first row of a text or list column (plain layout) whose text is not UTF-8, or None.

    A prefix of a plain text array validates only the text in it: a bisection finds the first
    bad value in ~2 passes over the column, with no Python object per row.
    """
    text = pc.list_flatten(column) if is_list(pa, column.type) else column
    good, bad = 0, len(text)  # text[:good] is valid; text[:bad] may not be
    if _valid_prefix(pa, text, bad):
        return None
    while bad - good > 1:
        middle = (good + bad) // 2
        if _valid_prefix(pa, text, middle):
            good = middle
        else:
            bad = middle
    if text is column:
        return rows(pa, [bad - 1])
    return rows(pa, [pc.list_parent_indices(column)[bad - 1].as_py()])


def _valid_prefix(pa: Any, text: Any, length: int) -> bool:
    try:
        text.slice(0, length).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _any(pc: Kernels, mask: Any) -> bool:
    return bool(pc.any(mask).as_py())


def _mask_rows(pc: Kernels, mask: Any) -> Any:
    """The row numbers where ``mask`` is true (null counts as false)."""
    return pc.indices_nonzero(pc.fill_null(mask, False))


def _timestamp_out_of_range(pa: Any, pc: Kernels, column: Any, unit: str) -> Any:
    """A mask of the timestamps outside years 1 to 9999; None when there are none."""
    if unit == "ns":
        return None  # 64-bit nanoseconds reach only years 1677 to 2262
    per = PER_SECOND[unit]
    low, high = TS_MIN_S * per, TS_MAX_S * per
    raw = pc.cast(column, pa.int64())
    extremes = pc.min_max(raw).as_py()
    if extremes["min"] is None or (extremes["min"] >= low and extremes["max"] < high):
        return None
    return pc.or_(pc.less(raw, low), pc.greater_equal(raw, high))


def check(
    pc: Kernels,
    batch: Any,
    plan: Plan,
    *,
    start: int,
    first_rows: int = 0,
    not_utf8: frozenset[int] = frozenset(),
) -> ValidationError | None:
    """The first rule a row of a prepared batch breaks, as the record path raises it; or None.

    ``start`` is the stream position of the batch's first row; its first ``first_rows`` rows are
    judged by ``plan.encoders[0]`` (a replace's first chunk), the others by ``encoders[1]``.
    """
    flagged, out_of_range = suspects(pc, batch, plan, not_utf8)
    for row in flagged:
        error = _check_row(pc, batch, plan, row, start, row < first_rows, out_of_range)
        if error is not None:
            return error
    return None


def _check_row(
    pc: Kernels,
    batch: Any,
    plan: Plan,
    row: int,
    start: int,
    first: bool,
    out_of_range: dict[int, frozenset[int]],
) -> ValidationError | None:
    """Give one row, as a record, to EntryEncoder; return the rule it breaks, if any."""
    position = start + row
    encoder = plan.encoders[0] if first else plan.encoders[1]
    ids = batch.column(0)
    try:
        rid = ids[row].as_py()
    except UnicodeDecodeError:
        return ValidationError(
            "the ID is not UTF-8 text", position=position, record_id=_raw_text(pc._pa, ids, row)
        )
    record: dict[str, Any] = {"id": rid}
    attributes: dict[str, Any] = {}
    try:
        # The ID is judged first, as the record path does.
        encoder.encode(record, position)
        for number, attribute in enumerate(plan.attributes, start=1):
            if attribute.kind == TS:
                if row in out_of_range.get(number, ()):
                    raise ValidationError(
                        f"attribute {attribute.name!r} is a timestamp outside years 1 to 9999, "
                        "which a date attribute cannot hold",
                        position=position,
                        record_id=rid,
                    )
                # Any other timestamp is valid (and Python cannot hold nanoseconds).
                continue
            what = f"attribute {attribute.name!r}"
            value = _decoded(batch.column(number), row, what, position, rid)
            if value is not None:
                attributes[attribute.name] = value
        if plan.has_attributes:
            record["attributes"] = attributes
        if plan.tags_index is not None:
            tags = batch.column(batch.num_columns - 1)
            record["tags"] = _decoded(tags, row, "a tag", position, rid)
        encoder.encode(record, position)
    except ValidationError as exc:
        return exc
    return None


def _decoded(column: Any, row: int, what: str, position: int, rid: str) -> Any:
    """A cell's Python value; ValidationError if its text is not UTF-8."""
    try:
        return column[row].as_py()
    except UnicodeDecodeError:
        raise ValidationError(
            f"{what} is not UTF-8 text", position=position, record_id=rid
        ) from None


def _raw_text(pa: Any, column: Any, row: int) -> str:
    """A text cell that is not UTF-8, shown with its bad bytes escaped."""
    text = column.slice(row, 1)
    binary = pa.large_binary() if pa.types.is_large_string(text.type) else pa.binary()
    raw: bytes = text.view(binary)[0].as_py()
    return raw.decode("utf-8", "backslashreplace")
