/* Optional accelerator of the columnar path: Arrow columns in, JSON chunk bodies out.
 *
 * _columnar.py checks every row first: the passes here (suspect_rows, suspect_tag_rows) flag
 * the rows that may break a rule, for the record rules to judge (Arrow's kernels check text
 * of a date or URL form); write_chunks then writes the checked rows as JSON, the entries the
 * DuckDB query beside it writes, with the GIL released, so the event loop runs while a step
 * is written, into an Arena's memory reused from step to step.
 * What the checks should have stopped (a null list item, bytes that are not UTF-8, a date
 * outside years 1 to 9999) makes it return the row's number instead, and the caller writes
 * that step with DuckDB. Nothing here is required: without a C compiler the package installs
 * without it and uses DuckDB for every step.
 *
 * Columns come as tuples of buffers (Arrow's own layout: validity bitmap, offsets, data), so
 * no Arrow header is needed. Each row is written as
 *     head id [attributes_open (key value){,} "}"] [tags_key list] "}" ","
 * where a null attribute drops its key and a null tags list drops the tags key.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum {
    K_STR = 0,   /* text written as a JSON string (escaped) */
    /* 1 is not used. */
    K_FLOAT = 2, /* Arrow's text of a float64: ".0" added when it reads as an integer */
    K_INT = 3,   /* int64 values */
    K_UINT = 4,  /* uint64 values */
    K_LIST = 5,  /* list of strings, written as a JSON array of strings */
    K_TS = 6,    /* int64 timestamps, UTC, written as the library's date text */
    K_DOUBLE = 7, /* float64 values with at most FIXED_DECIMALS decimals (see fixed_decimals) */
};

typedef struct {
    int kind;
    Py_ssize_t offset; /* the array's offset, in rows */
    int wide;          /* offsets are int64 (large types), else int32 */
    int item_wide;     /* K_LIST: the items' offsets are int64 */
    Py_ssize_t item_offset; /* K_LIST: the items' offset; K_TS: the unit, in parts of a second */
    Py_buffer validity, offsets, data, item_validity, item_offsets, item_data;
    int has_validity, has_offsets, has_data, has_item_validity, has_item_offsets, has_item_data;
    const char *key; /* the attribute's '"name":' (owned by the key object) */
    Py_ssize_t key_len;
} Column;

static int64_t offset_at(const void *p, int wide, Py_ssize_t i) {
    return wide ? ((const int64_t *)p)[i] : (int64_t)((const int32_t *)p)[i];
}

/* Bit `bit` of an Arrow validity bitmap. */
static int bit_set(const Py_buffer *bitmap, Py_ssize_t bit) {
    return (((const uint8_t *)bitmap->buf)[bit >> 3] >> (bit & 7)) & 1;
}

static int is_valid(const Column *c, Py_ssize_t row) {
    return !c->has_validity || bit_set(&c->validity, c->offset + row);
}

static void release_column(Column *c) {
    if (c->has_validity) PyBuffer_Release(&c->validity);
    if (c->has_offsets) PyBuffer_Release(&c->offsets);
    if (c->has_data) PyBuffer_Release(&c->data);
    if (c->has_item_validity) PyBuffer_Release(&c->item_validity);
    if (c->has_item_offsets) PyBuffer_Release(&c->item_offsets);
    if (c->has_item_data) PyBuffer_Release(&c->item_data);
    c->has_validity = c->has_offsets = c->has_data = 0;
    c->has_item_validity = c->has_item_offsets = c->has_item_data = 0;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int *flag) {
    if (obj == Py_None) return 0;
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    *flag = 1;
    return 0;
}

/* (kind, offset, wide, validity, offsets, data[, item_offset, item_wide, item_validity,
 *  item_offsets, item_data]) */
static int parse_column(PyObject *spec, Column *c) {
    memset(c, 0, sizeof(*c));
    PyObject *validity, *offsets, *data;
    PyObject *item_validity = Py_None, *item_offsets = Py_None, *item_data = Py_None;
    Py_ssize_t item_offset = 0;
    int item_wide = 0;
    if (!PyTuple_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "a column is a tuple");
        return -1;
    }
    if (!PyArg_ParseTuple(spec, "inpOOO|npOOO", &c->kind, &c->offset, &c->wide, &validity,
                          &offsets, &data, &item_offset, &item_wide, &item_validity,
                          &item_offsets, &item_data))
        return -1;
    c->item_offset = item_offset;
    c->item_wide = item_wide;
    if (get_buffer(validity, &c->validity, &c->has_validity) < 0 ||
        get_buffer(offsets, &c->offsets, &c->has_offsets) < 0 ||
        get_buffer(data, &c->data, &c->has_data) < 0 ||
        get_buffer(item_validity, &c->item_validity, &c->has_item_validity) < 0 ||
        get_buffer(item_offsets, &c->item_offsets, &c->has_item_offsets) < 0 ||
        get_buffer(item_data, &c->item_data, &c->has_item_data) < 0) {
        release_column(c);
        return -1;
    }
    int ok;
    if (c->kind < K_STR || c->kind > K_DOUBLE || c->kind == 1)
        ok = 0;
    else if (c->kind == K_LIST)
        ok = c->has_offsets && c->has_item_offsets && c->has_item_data;
    else if (c->kind == K_INT || c->kind == K_UINT || c->kind == K_DOUBLE)
        ok = c->has_data;
    else if (c->kind == K_TS)
        ok = c->has_data && (item_offset == 1 || item_offset == 1000 || item_offset == 1000000 ||
                             item_offset == 1000000000);
    else
        ok = c->has_offsets && c->has_data;
    if (!ok) {
        release_column(c);
        PyErr_SetString(PyExc_ValueError, "a column lacks a buffer its kind needs");
        return -1;
    }
    return 0;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether any of the 8 bytes in w needs more than a copy: a control character, a quote, a
 * backslash, or a byte of a multi-byte UTF-8 sequence (checked one by one). */
static int needs_care(uint64_t w) {
    uint64_t quote = w ^ (ONES * '"'), backslash = w ^ (ONES * '\\');
    uint64_t zero_in_quote = (quote - ONES) & ~quote;
    uint64_t zero_in_backslash = (backslash - ONES) & ~backslash;
    uint64_t below_space = (w - ONES * 0x20) & ~w;
    return ((zero_in_quote | zero_in_backslash | below_space) & HIGHS) != 0 || (w & HIGHS) != 0;
}

/* Whether rows 0 to rows - 1 of a column lie within its buffers (offsets taken as Arrow
 * promises them: rising): a wrong row count raises instead of reading past a buffer. */
static int column_fits(const Column *c, Py_ssize_t rows) {
    Py_ssize_t end = c->offset + rows;
    if (rows < 0 || c->offset < 0) return 0;
    if (c->has_validity && c->validity.len * 8 < end) return 0;
    if (c->kind == K_INT || c->kind == K_UINT || c->kind == K_TS || c->kind == K_DOUBLE)
        return c->data.len / 8 >= end;
    Py_ssize_t width = c->wide ? 8 : 4;
    if (c->offsets.len / width < end + 1) return 0;
    int64_t first = offset_at(c->offsets.buf, c->wide, c->offset);
    int64_t last = offset_at(c->offsets.buf, c->wide, end);
    if (c->kind != K_LIST) return first >= 0 && last >= first && last <= c->data.len;
    Py_ssize_t item_width = c->item_wide ? 8 : 4;
    if (first < 0 || last < first || c->item_offset < 0 ||
        c->item_offsets.len / item_width < c->item_offset + last + 1)
        return 0;
    int64_t a = offset_at(c->item_offsets.buf, c->item_wide, c->item_offset + first);
    int64_t b = offset_at(c->item_offsets.buf, c->item_wide, c->item_offset + last);
    if (c->has_item_validity && c->item_validity.len * 8 < c->item_offset + last) return 0;
    return a >= 0 && b >= a && b <= c->item_data.len;
}

/* parse_column, for `rows` rows of a column whose kind is one of `kinds` (a bit per kind). */
static int parse_column_of(PyObject *spec, Column *c, unsigned kinds, const char *expected,
                           Py_ssize_t rows) {
    if (parse_column(spec, c) < 0) return -1;
    if (!(kinds & (1u << c->kind)) || !column_fits(c, rows)) {
        release_column(c);
        PyErr_Format(PyExc_ValueError, "expected %zd rows of %s", rows, expected);
        return -1;
    }
    return 0;
}

/* The most bytes rows [begin, end) of a column can take, besides its key. */
static Py_ssize_t column_bound(const Column *c, Py_ssize_t begin, Py_ssize_t end) {
    Py_ssize_t rows = end - begin;
    const void *off = c->has_offsets ? c->offsets.buf : NULL;
    switch (c->kind) {
    case K_STR: /* quotes, and at most 6 bytes (\u00XX) per byte */
        return 2 * rows + 6 * (Py_ssize_t)(offset_at(off, c->wide, c->offset + end) -
                                           offset_at(off, c->wide, c->offset + begin));
    case K_FLOAT:
        return 2 * rows + (Py_ssize_t)(offset_at(off, c->wide, c->offset + end) -
                                       offset_at(off, c->wide, c->offset + begin));
    case K_INT:
    case K_UINT:
        return 21 * rows;
    case K_TS: /* "YYYY-MM-DDTHH:MM:SS.fffffffffZ" */
        return 32 * rows;
    case K_DOUBLE: /* "-", 15 digits, ".", 8 decimals */
        return 26 * rows;
    default: { /* K_LIST: brackets, then quotes and commas per item, 6 bytes per byte */
        int64_t first = offset_at(off, c->wide, c->offset + begin);
        int64_t last = offset_at(off, c->wide, c->offset + end);
        const void *io = c->item_offsets.buf;
        int64_t a = offset_at(io, c->item_wide, c->item_offset + first);
        int64_t b = offset_at(io, c->item_wide, c->item_offset + last);
        return 2 * rows + 3 * (Py_ssize_t)(last - first) + 6 * (Py_ssize_t)(b - a);
    }
    }
}

/* memcpy for the short copies of every row (keys, heads, IDs, digits), inlined: n bytes
 * copied as two overlapping words, within both ranges. A call to libc's memcpy per copy
 * (~15 a row) cost more than the copying. */
static inline void copy_short(char *out, const void *src, Py_ssize_t n) {
    const char *s = src;
    if (n >= 8 && n <= 16) {
        uint64_t a, b;
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
        memcpy(out, &a, 8);
        memcpy(out + n - 8, &b, 8);
    } else if (n > 16 && n <= 32) {
        uint64_t a, b, c, d;
        memcpy(&a, s, 8);
        memcpy(&b, s + 8, 8);
        memcpy(&c, s + n - 16, 8);
        memcpy(&d, s + n - 8, 8);
        memcpy(out, &a, 8);
        memcpy(out + 8, &b, 8);
        memcpy(out + n - 16, &c, 8);
        memcpy(out + n - 8, &d, 8);
    } else if (n >= 4 && n < 8) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        memcpy(out, &a, 4);
        memcpy(out + n - 4, &b, 4);
    } else if (n < 4) {
        for (Py_ssize_t i = 0; i < n; i++) out[i] = s[i];
    } else {
        memcpy(out, s, (size_t)n);
    }
}

static const char HEX[] = "0123456789abcdef";

/* The length of the valid UTF-8 sequence at s (n bytes left), or 0 if it is not one. */
static int utf8_sequence(const uint8_t *s, Py_ssize_t n) {
    uint8_t b = s[0];
    if (b < 0xC2) return 0;
    if (b < 0xE0) return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (b < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (b == 0xE0 && s[1] < 0xA0) return 0; /* overlong */
        if (b == 0xED && s[1] >= 0xA0) return 0; /* surrogates */
        return 3;
    }
    if (b < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if (b == 0xF0 && s[1] < 0x90) return 0; /* overlong */
        if (b == 0xF4 && s[1] >= 0x90) return 0; /* beyond U+10FFFF */
        return 4;
    }
    return 0;
}

/* Writes s as a JSON string; returns the end, or NULL if s is not UTF-8. */
static char *write_string(char *out, const uint8_t *s, Py_ssize_t n) {
    *out++ = '"';
    Py_ssize_t i = 0;
    while (i < n) {
        Py_ssize_t run = i;
        while (run + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + run, 8);
            if (needs_care(w)) break;
            run += 8;
        }
        while (run < n && s[run] >= 0x20 && s[run] < 0x80 && s[run] != '"' && s[run] != '\\')
            run++;
        copy_short(out, s + i, run - i);
        out += run - i;
        i = run;
        if (i == n) break;
        uint8_t b = s[i];
        if (b >= 0x80) {
            int len = utf8_sequence(s + i, n - i);
            if (!len) return NULL;
            memcpy(out, s + i, len);
            out += len;
            i += len;
            continue;
        }
        *out++ = '\\';
        switch (b) {
        case '"': *out++ = '"'; break;
        case '\\': *out++ = '\\'; break;
        case '\b': *out++ = 'b'; break;
        case '\f': *out++ = 'f'; break;
        case '\n': *out++ = 'n'; break;
        case '\r': *out++ = 'r'; break;
        case '\t': *out++ = 't'; break;
        default:
            *out++ = 'u';
            *out++ = '0';
            *out++ = '0';
            *out++ = HEX[b >> 4];
            *out++ = HEX[b & 15];
        }
        i++;
    }
    *out++ = '"';
    return out;
}

static const char PAIRS[] = "00010203040506070809101112131415161718192021222324252627282930313233"
                            "34353637383940414243444546474849505152535455565758596061626364656667"
                            "6869707172737475767778798081828384858687888990919293949596979899";

/* v (0 to 99) as two digits. */
static char *write2(char *out, int64_t v) {
    memcpy(out, PAIRS + 2 * v, 2);
    return out + 2;
}

/* 10^0 to 10^19: a uint64's digits are counted against them. */
static const uint64_t POWERS_OF_TEN[20] = {
    1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL, 100000000ULL,
    1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL, 10000000000000ULL,
    100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL, 100000000000000000ULL,
    1000000000000000000ULL, 10000000000000000000ULL};

/* v in decimal, written in place from its last digit back (no copy). */
static char *write_uint(char *out, uint64_t v) {
    int n = 1;
    while (n < 20 && v >= POWERS_OF_TEN[n]) n++;
    char *end = out + n, *p = end;
    while (v >= 100) {
        p -= 2;
        memcpy(p, PAIRS + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10)
        memcpy(p - 2, PAIRS + 2 * v, 2);
    else
        p[-1] = (char)('0' + v);
    return end;
}

static char *write_digits(char *out, int64_t v, int width) {
    for (int i = width - 1; i >= 0; i--) {
        out[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return out + width;
}

/* A UTC timestamp as _validate._utc_text writes it: seconds, then six digits of fraction when
 * there is one (nine when it is not a whole microsecond). NULL outside years 1 to 9999. */
static char *write_timestamp(char *out, int64_t value, int64_t per_second) {
    int64_t seconds = value / per_second, fraction = value % per_second;
    if (fraction < 0) {
        fraction += per_second;
        seconds -= 1;
    }
    int64_t days = seconds / 86400, in_day = seconds % 86400;
    if (in_day < 0) {
        in_day += 86400;
        days -= 1;
    }
    /* Howard Hinnant's civil_from_days. */
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t day = doy - (153 * mp + 2) / 5 + 1;
    int64_t month = mp < 10 ? mp + 3 : mp - 9;
    int64_t year = yoe + era * 400 + (month <= 2);
    if (year < 1 || year > 9999) return NULL;
    *out++ = '"';
    out = write2(out, year / 100);
    out = write2(out, year % 100);
    *out++ = '-';
    out = write2(out, month);
    *out++ = '-';
    out = write2(out, day);
    *out++ = 'T';
    out = write2(out, in_day / 3600);
    *out++ = ':';
    out = write2(out, in_day / 60 % 60);
    *out++ = ':';
    out = write2(out, in_day % 60);
    if (fraction) {
        int64_t nanos = fraction * (1000000000 / per_second);
        *out++ = '.';
        if (nanos % 1000)
            out = write_digits(out, nanos, 9);
        else
            out = write_digits(out, nanos / 1000, 6);
    }
    *out++ = 'Z';
    *out++ = '"';
    return out;
}

static const uint8_t *text_at(const Column *c, Py_ssize_t row, Py_ssize_t *len) {
    const void *off = c->offsets.buf;
    int64_t a = offset_at(off, c->wide, c->offset + row);
    int64_t b = offset_at(off, c->wide, c->offset + row + 1);
    *len = (Py_ssize_t)(b - a);
    return (const uint8_t *)c->data.buf + a;
}

/* -- Floats with few decimals, the common case, written without Arrow's text ---------------
 *
 * A double x is written as the decimal D / 10^k with the fewest decimals k (at most
 * FIXED_DECIMALS) that reads back as x: D = round(|x| * 10^k), kept when D / 10^k == |x|.
 * D and 10^k are exact in a double (D < 2^53), and IEEE division rounds correctly, so the
 * quotient is the double nearest to the decimal, the one any JSON parser reads: the text
 * reads back as x exactly. Other doubles (more decimals, |x| >= 10^15, tiny) are written
 * from Arrow's text (K_FLOAT) for the whole step. */
#define FIXED_DECIMALS 8

static const double POWERS[FIXED_DECIMALS + 1] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8};
static const int64_t INT_POWERS[FIXED_DECIMALS + 1] = {
    1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};

/* The decimals k and the digits D of x, or -1. */
static int fixed_decimals(double x, int64_t *digits) {
    double ax = fabs(x);
    if (!(ax < 1e15)) return -1; /* NaN and infinities too */
    for (int k = 0; k <= FIXED_DECIMALS; k++) {
        double scaled = ax * POWERS[k];
        if (scaled >= 9007199254740992.0) return -1; /* 2^53: no longer exact */
        double d = nearbyint(scaled);
        if (d / POWERS[k] == ax) {
            *digits = (int64_t)d;
            return k;
        }
    }
    return -1;
}

static char *write_double(char *out, double x) {
    int64_t digits;
    int k = fixed_decimals(x, &digits);
    if (k < 0) return NULL; /* fixed_doubles said otherwise: never */
    if (signbit(x)) *out++ = '-';
    out = write_uint(out, (uint64_t)(digits / INT_POWERS[k]));
    *out++ = '.';
    if (k == 0) {
        *out++ = '0';
        return out;
    }
    return write_digits(out, digits % INT_POWERS[k], k);
}

/* The items of a list row: numbers first to last (exclusive). */
static void items_of(const Column *c, Py_ssize_t row, int64_t *first, int64_t *last) {
    *first = offset_at(c->offsets.buf, c->wide, c->offset + row);
    *last = offset_at(c->offsets.buf, c->wide, c->offset + row + 1);
}

/* The text of a list's item, or NULL if the item is null. */
static const uint8_t *item_at(const Column *c, int64_t item, Py_ssize_t *len) {
    Py_ssize_t at = c->item_offset + (Py_ssize_t)item;
    if (c->has_item_validity && !bit_set(&c->item_validity, at)) return NULL;
    int64_t a = offset_at(c->item_offsets.buf, c->item_wide, at);
    int64_t b = offset_at(c->item_offsets.buf, c->item_wide, at + 1);
    *len = (Py_ssize_t)(b - a);
    return (const uint8_t *)c->item_data.buf + a;
}

/* Writes one value; returns the end, or NULL if the row cannot be written here. */
static char *write_value(char *out, const Column *c, Py_ssize_t row) {
    Py_ssize_t n;
    const uint8_t *s;
    switch (c->kind) {
    case K_STR:
        s = text_at(c, row, &n);
        return write_string(out, s, n);
    case K_FLOAT: {
        s = text_at(c, row, &n);
        int integral = n > 0;
        for (Py_ssize_t i = 0; i < n; i++)
            if (!((s[i] >= '0' && s[i] <= '9') || s[i] == '-')) integral = 0;
        memcpy(out, s, n);
        out += n;
        if (integral) {
            *out++ = '.';
            *out++ = '0';
        }
        return out;
    }
    case K_INT: {
        int64_t v = ((const int64_t *)c->data.buf)[c->offset + row];
        if (v < 0) {
            *out++ = '-';
            return write_uint(out, (uint64_t)0 - (uint64_t)v);
        }
        return write_uint(out, (uint64_t)v);
    }
    case K_UINT:
        return write_uint(out, ((const uint64_t *)c->data.buf)[c->offset + row]);
    case K_TS:
        return write_timestamp(out, ((const int64_t *)c->data.buf)[c->offset + row],
                               c->item_offset);
    case K_DOUBLE:
        return write_double(out, ((const double *)c->data.buf)[c->offset + row]);
    default: { /* K_LIST */
        int64_t first, last;
        items_of(c, row, &first, &last);
        *out++ = '[';
        for (int64_t item = first; item < last; item++) {
            s = item_at(c, item, &n);
            if (!s) return NULL; /* a null item breaks a rule the checks enforce */
            if (item > first) *out++ = ',';
            out = write_string(out, s, n);
            if (!out) return NULL;
        }
        *out++ = ']';
        return out;
    }
    }
}

/* A 64-bit hash of a byte string, 8 bytes at a time (collisions only cost a wait upstream). */
static uint64_t hash_bytes(const uint8_t *s, Py_ssize_t n) {
    const uint64_t k = 0x9E3779B97F4A7C15ULL;
    uint64_t h = 0x2545F4914F6CDD1DULL ^ ((uint64_t)n * k);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ (w * k)) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, s, (size_t)n);
        h = (h ^ (w * k)) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    return h;
}

typedef struct {
    const char *p;
    Py_ssize_t n;
} Text;

static int get_text(PyObject *obj, Text *t) {
    if (obj == Py_None) {
        t->p = NULL;
        t->n = 0;
        return 0;
    }
    char *p;
    if (PyBytes_AsStringAndSize(obj, &p, &t->n) < 0) return -1;
    t->p = p;
    return 0;
}

#define PUT(text)                                                                              \
    do {                                                                                       \
        copy_short(out, (text).p, (text).n);                                                   \
        out += (text).n;                                                                       \
    } while (0)

/* -- Memory for bodies, reused from step to step ------------------------------------------
 *
 * A step's bodies are written into one block, held by a Slab that Python sees through
 * memoryviews (one per chunk). When the last of them is gone, the block goes back to its Arena
 * (one per upload), and the next step is written into memory already faulted in: a fresh
 * block per step had the kernel zero ~200 MB of pages per million rows (a fifth of the
 * writer's time). An arena keeps a few blocks only, and frees them when it is closed.
 */
#define ARENA_BLOCKS 8

typedef struct {
    char *ptr;
    Py_ssize_t capacity;
} Block;

typedef struct {
    PyObject_HEAD
    Block free[ARENA_BLOCKS];
    int nfree;
    int closed;
} Arena;

typedef struct {
    PyObject_HEAD
    Arena *arena; /* where the block goes back; a strong reference */
    Block block;
    Py_ssize_t length;
} Slab;

static void arena_free_all(Arena *a) {
    for (int i = 0; i < a->nfree; i++) PyMem_RawFree(a->free[i].ptr);
    a->nfree = 0;
}

/* A block of at least `need` bytes: the smallest free one that is large enough, else a new
 * one (free blocks too small for this step are dropped: the next steps are alike). */
static Block arena_take(Arena *a, Py_ssize_t need) {
    int best = -1;
    for (int i = 0; i < a->nfree; i++)
        if (a->free[i].capacity >= need && (best < 0 || a->free[i].capacity < a->free[best].capacity))
            best = i;
    Block block = {NULL, 0};
    if (best >= 0) {
        block = a->free[best];
        a->free[best] = a->free[--a->nfree];
        return block;
    }
    for (int i = 0; i < a->nfree;) {
        if (a->free[i].capacity < need) {
            PyMem_RawFree(a->free[i].ptr);
            a->free[i] = a->free[--a->nfree];
        } else {
            i++;
        }
    }
    /* Room to grow: the next step's bodies may be a little larger. */
    Py_ssize_t capacity = ((need + need / 8) | ((1 << 20) - 1)) + 1;
    block.ptr = PyMem_RawMalloc(capacity);
    block.capacity = block.ptr ? capacity : 0;
    return block;
}

static void arena_give(Arena *a, Block block) {
    if (a && !a->closed && a->nfree < ARENA_BLOCKS)
        a->free[a->nfree++] = block;
    else
        PyMem_RawFree(block.ptr);
}

static PyObject *arena_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (!PyArg_ParseTuple(args, ":Arena")) return NULL;
    Arena *a = (Arena *)type->tp_alloc(type, 0);
    return (PyObject *)a;
}

static PyObject *arena_close(Arena *a, PyObject *unused) {
    arena_free_all(a);
    a->closed = 1;
    Py_RETURN_NONE;
}

static void arena_dealloc(Arena *a) {
    arena_free_all(a);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static PyMethodDef arena_methods[] = {
    {"close", (PyCFunction)arena_close, METH_NOARGS,
     "Free the blocks kept; blocks still in use are freed when their slab goes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ArenaType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "batch_audience._speedups.Arena",
    .tp_basicsize = sizeof(Arena),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The memory one upload writes its bodies into, reused from step to step.",
    .tp_new = arena_new,
    .tp_dealloc = (destructor)arena_dealloc,
    .tp_methods = arena_methods,
};

static int slab_getbuffer(Slab *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->block.ptr, self->length, 1, flags);
}

static void slab_dealloc(Slab *self) {
    if (self->block.ptr) arena_give(self->arena, self->block);
    Py_XDECREF(self->arena);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyBufferProcs slab_as_buffer = {(getbufferproc)slab_getbuffer, NULL};

static PyTypeObject SlabType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "batch_audience._speedups.Slab",
    .tp_basicsize = sizeof(Slab),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The bodies of one step (read-only), in a block of its arena.",
    .tp_dealloc = (destructor)slab_dealloc,
    .tp_as_buffer = &slab_as_buffer,
};

PyDoc_STRVAR(write_chunks_doc,
             "write_chunks(heads, ids, attributes_open, attributes, tags_key, tags, bounds, "
             "hashes, arena)\n--\n\n"
             "A Slab holding each chunk's JSON array of entries and the (start, end) of each in "
             "it, or the number of the first row that cannot be written here.");

static PyObject *write_chunks(PyObject *self, PyObject *args) {
    PyObject *heads, *ids_spec, *open_obj, *attribute_specs, *tags_key_obj, *tags_spec, *bounds;
    Py_buffer hashes;
    Arena *arena;
    if (!PyArg_ParseTuple(args, "OOOOOOOw*O!", &heads, &ids_spec, &open_obj, &attribute_specs,
                          &tags_key_obj, &tags_spec, &bounds, &hashes, &ArenaType, &arena))
        return NULL;
    PyObject *result = NULL, *spans = NULL;
    Slab *slab = NULL;
    Column ids;
    Column *columns = NULL;
    Column tags;
    int have_ids = 0, have_tags = 0;
    Py_ssize_t ncolumns = 0, parsed = 0, nbounds = 0;
    Py_ssize_t *begins = NULL, *ends = NULL, *sizes = NULL;
    Text head_first, head_rest, open_text, tags_key;
    char **starts = NULL;
    Py_ssize_t failed = -1;

    if (!PyTuple_Check(heads) || PyTuple_GET_SIZE(heads) != 2 || !PyList_Check(attribute_specs) ||
        !PyList_Check(bounds)) {
        PyErr_SetString(PyExc_TypeError, "heads is a pair, attributes and bounds are lists");
        goto done;
    }
    if (get_text(PyTuple_GET_ITEM(heads, 0), &head_first) < 0 ||
        get_text(PyTuple_GET_ITEM(heads, 1), &head_rest) < 0 || get_text(open_obj, &open_text) < 0 ||
        get_text(tags_key_obj, &tags_key) < 0)
        goto done;
    if (parse_column(ids_spec, &ids) < 0) goto done;
    have_ids = 1;
    if (ids.kind != K_STR) {
        PyErr_SetString(PyExc_ValueError, "IDs are strings");
        goto done;
    }
    if (tags_spec != Py_None) {
        if (parse_column(tags_spec, &tags) < 0) goto done;
        have_tags = 1;
    }
    ncolumns = PyList_GET_SIZE(attribute_specs);
    columns = PyMem_Calloc(ncolumns ? ncolumns : 1, sizeof(Column));
    if (!columns) {
        PyErr_NoMemory();
        goto done;
    }
    for (; parsed < ncolumns; parsed++) {
        PyObject *pair = PyList_GET_ITEM(attribute_specs, parsed);
        PyObject *key, *spec;
        if (!PyArg_ParseTuple(pair, "SO", &key, &spec)) goto done;
        if (parse_column(spec, &columns[parsed]) < 0) goto done;
        columns[parsed].key = PyBytes_AS_STRING(key);
        columns[parsed].key_len = PyBytes_GET_SIZE(key);
    }
    nbounds = PyList_GET_SIZE(bounds);
    begins = PyMem_Calloc(nbounds ? nbounds : 1, sizeof(Py_ssize_t));
    ends = PyMem_Calloc(nbounds ? nbounds : 1, sizeof(Py_ssize_t));
    starts = PyMem_Calloc(nbounds ? nbounds : 1, sizeof(char *));
    if (!begins || !ends || !starts) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t rows = 0;
    for (Py_ssize_t i = 0; i < nbounds; i++) {
        if (!PyArg_ParseTuple(PyList_GET_ITEM(bounds, i), "nn", &begins[i], &ends[i])) goto done;
        if (begins[i] < rows || ends[i] <= begins[i]) {
            PyErr_SetString(PyExc_ValueError, "bounds are consecutive, non-empty row ranges");
            goto done;
        }
        rows = ends[i];
    }
    if (hashes.len < rows * (Py_ssize_t)sizeof(uint64_t)) {
        PyErr_SetString(PyExc_ValueError, "hashes holds fewer than one uint64 per row");
        goto done;
    }
    int fits = column_fits(&ids, rows) && (!have_tags || column_fits(&tags, rows));
    for (Py_ssize_t k = 0; k < ncolumns; k++) fits = fits && column_fits(&columns[k], rows);
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "the bounds go past a column's buffers");
        goto done;
    }
    sizes = PyMem_Calloc(nbounds ? nbounds : 1, sizeof(Py_ssize_t));
    if (!sizes) {
        PyErr_NoMemory();
        goto done;
    }
    uint64_t *hash_out = hashes.buf;
    Py_BEGIN_ALLOW_THREADS
    /* Every row's hash, even when a row cannot be written here: the caller still needs them. */
    for (Py_ssize_t row = 0; row < rows; row++) {
        Py_ssize_t n;
        const uint8_t *id = text_at(&ids, row, &n);
        hash_out[row] = hash_bytes(id, n);
    }
    /* Each body's largest size (every byte escaped); only the pages written are touched. */
    for (Py_ssize_t i = 0; i < nbounds; i++) {
        Py_ssize_t b = begins[i], e = ends[i];
        Py_ssize_t per_row = (i == 0 ? head_first.n : head_rest.n) + 2 + 1;
        Py_ssize_t size = 2 + (e - b) * per_row + column_bound(&ids, b, e);
        if (ncolumns || open_text.n) {
            size += (e - b) * (open_text.n + 1);
            for (Py_ssize_t k = 0; k < ncolumns; k++)
                size += (e - b) * (columns[k].key_len + 1) + column_bound(&columns[k], b, e);
        }
        if (have_tags) size += (e - b) * tags_key.n + column_bound(&tags, b, e);
        sizes[i] = size;
    }
    Py_END_ALLOW_THREADS
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < nbounds; i++) total += sizes[i];
    slab = PyObject_New(Slab, &SlabType);
    if (!slab) goto done;
    Py_INCREF(arena);
    slab->arena = arena;
    slab->length = 0;
    slab->block = arena_take(arena, total ? total : 1);
    if (!slab->block.ptr) {
        PyErr_NoMemory();
        goto done;
    }
    char *out = slab->block.ptr;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < nbounds && failed < 0; i++) {
        starts[i] = out;
        const Text *head = i == 0 ? &head_first : &head_rest;
        *out++ = '[';
        for (Py_ssize_t row = begins[i]; row < ends[i]; row++) {
            Py_ssize_t n;
            const uint8_t *id = text_at(&ids, row, &n);
            PUT(*head);
            out = is_valid(&ids, row) ? write_string(out, id, n) : NULL;
            if (!out) {
                failed = row;
                break;
            }
            if (open_text.p) {
                PUT(open_text);
                int any = 0;
                for (Py_ssize_t k = 0; k < ncolumns && out; k++) {
                    const Column *c = &columns[k];
                    if (!is_valid(c, row)) continue;
                    if (any) *out++ = ',';
                    any = 1;
                    copy_short(out, c->key, c->key_len);
                    out = write_value(out + c->key_len, c, row);
                }
                if (!out) {
                    failed = row;
                    break;
                }
                *out++ = '}';
            }
            if (have_tags && is_valid(&tags, row)) {
                PUT(tags_key);
                out = write_value(out, &tags, row);
                if (!out) {
                    failed = row;
                    break;
                }
            }
            *out++ = '}';
            *out++ = ',';
        }
        if (failed < 0) out[-1] = ']'; /* the last entry's comma closes the array */
    }
    Py_END_ALLOW_THREADS
    if (failed >= 0) {
        result = PyLong_FromSsize_t(failed);
        goto done;
    }
    slab->length = out - slab->block.ptr;
    spans = PyList_New(nbounds);
    if (!spans) goto done;
    for (Py_ssize_t i = 0; i < nbounds; i++) {
        Py_ssize_t start = starts[i] - slab->block.ptr;
        Py_ssize_t end = i + 1 < nbounds ? starts[i + 1] - slab->block.ptr : slab->length;
        PyObject *span = Py_BuildValue("(nn)", start, end);
        if (!span) goto done;
        PyList_SET_ITEM(spans, i, span);
    }
    result = Py_BuildValue("(OO)", slab, spans);
done:
    Py_XDECREF(spans);
    Py_XDECREF(slab); /* back to the arena at once, unless the result holds it */
    if (have_ids) release_column(&ids);
    if (have_tags) release_column(&tags);
    for (Py_ssize_t k = 0; k < parsed; k++) release_column(&columns[k]);
    PyMem_Free(columns);
    PyMem_Free(begins);
    PyMem_Free(ends);
    PyMem_Free(sizes);
    PyMem_Free(starts);
    PyBuffer_Release(&hashes);
    return result;
}

/* Whether s holds UTF-8 only; ASCII is skipped 8 bytes at a time. */
static int is_utf8(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & HIGHS) break;
            i += 8;
        }
        if (i == n) break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int len = utf8_sequence(s + i, n - i);
        if (!len) return 0;
        i += len;
    }
    return 1;
}

/* Whether the text of rows 0 to rows - 1 of a text or list column is all ASCII. The rows'
 * bytes are contiguous: when none is above 0x7F (the common case), every row is UTF-8 and
 * counts one character per byte, and rows need not be looked at one by one. */
static int rows_are_ascii(const Column *c, Py_ssize_t rows) {
    const uint8_t *bytes;
    int64_t begin, end;
    if (c->kind == K_STR) {
        bytes = c->data.buf;
        begin = offset_at(c->offsets.buf, c->wide, c->offset);
        end = offset_at(c->offsets.buf, c->wide, c->offset + rows);
    } else {
        bytes = c->item_data.buf;
        begin = offset_at(c->item_offsets.buf, c->item_wide,
                          c->item_offset + offset_at(c->offsets.buf, c->wide, c->offset));
        end = offset_at(c->item_offsets.buf, c->item_wide,
                        c->item_offset + offset_at(c->offsets.buf, c->wide, c->offset + rows));
    }
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {
        uint64_t w;
        memcpy(&w, bytes + i, 8);
        if (w & HIGHS) return 0;
    }
    for (; i < end; i++)
        if (bytes[i] >= 0x80) return 0;
    return 1;
}

PyDoc_STRVAR(first_not_utf8_doc,
             "first_not_utf8(column, rows)\n--\n\n"
             "The first of the column's rows whose text (or an item of whose list) is not "
             "UTF-8, or -1.");

static PyObject *first_not_utf8(PyObject *self, PyObject *args) {
    PyObject *spec;
    Py_ssize_t rows;
    Column c;
    if (!PyArg_ParseTuple(args, "On", &spec, &rows)) return NULL;
    if (parse_column_of(spec, &c, 1u << K_STR | 1u << K_LIST, "text or lists of text", rows) < 0)
        return NULL;
    Py_ssize_t found = -1;
    Py_BEGIN_ALLOW_THREADS
    int ascii = rows_are_ascii(&c, rows);
    for (Py_ssize_t row = 0; row < rows && found < 0 && !ascii; row++) {
        if (c.kind == K_STR) {
            Py_ssize_t n;
            const uint8_t *text = text_at(&c, row, &n);
            if (!is_utf8(text, n)) found = row;
            continue;
        }
        int64_t first, last;
        items_of(&c, row, &first, &last);
        for (int64_t item = first; item < last && found < 0; item++) {
            Py_ssize_t n;
            const uint8_t *text = item_at(&c, item, &n);
            if (text && !is_utf8(text, n)) found = row;
        }
    }
    Py_END_ALLOW_THREADS
    release_column(&c);
    return PyLong_FromSsize_t(found);
}

/* Room for a row number per row of a column, or NULL (MemoryError, the column released). */
static Py_ssize_t *row_room(Column *c, Py_ssize_t rows) {
    Py_ssize_t *found = PyMem_RawMalloc(sizeof(Py_ssize_t) * (rows ? rows : 1));
    if (!found) {
        release_column(c);
        PyErr_NoMemory();
    }
    return found;
}

/* The first `count` row numbers of `found` as a Python list; the column and `found` released. */
static PyObject *rows_found(Column *c, Py_ssize_t *found, Py_ssize_t count) {
    release_column(c);
    PyObject *result = PyList_New(count);
    for (Py_ssize_t i = 0; result && i < count; i++) {
        PyObject *row = PyLong_FromSsize_t(found[i]);
        if (!row) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, row);
    }
    PyMem_RawFree(found);
    return result;
}

/* Whether a tag may break the tag rule: empty, too long, or holding a byte other than
 * lowercase ASCII (an uppercase letter, or any byte of a non-ASCII character). */
static int suspect_tag(const uint8_t *s, Py_ssize_t n, Py_ssize_t max_length) {
    if (n == 0 || n > max_length) return 1;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        /* On each byte's low 7 bits: + (0x80 - 'A') sets the high bit from 'A' up, and
         * + (0x7F - 'Z') from '[' up; the first without the second is 'A'..'Z'. */
        uint64_t low7 = w & (ONES * 0x7F);
        uint64_t from_a = low7 + ONES * (0x80 - 'A');
        uint64_t above_z = low7 + ONES * (0x7F - 'Z');
        if ((w | (from_a & ~above_z)) & HIGHS) return 1;
    }
    for (; i < n; i++)
        if (s[i] >= 0x80 || (s[i] >= 'A' && s[i] <= 'Z')) return 1;
    return 0;
}

PyDoc_STRVAR(suspect_tag_rows_doc,
             "suspect_tag_rows(tags, rows, max_length)\n--\n\n"
             "The rows of a list-of-text column with a tag that may break the tag rule "
             "(empty, longer than max_length bytes, null, not lowercase ASCII).");

static PyObject *suspect_tag_rows(PyObject *self, PyObject *args) {
    PyObject *spec;
    Py_ssize_t rows, max_length;
    Column c;
    if (!PyArg_ParseTuple(args, "Onn", &spec, &rows, &max_length)) return NULL;
    if (parse_column_of(spec, &c, 1u << K_LIST, "lists of text", rows) < 0) return NULL;
    Py_ssize_t *found = row_room(&c, rows);
    if (!found) return NULL;
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t row = 0; row < rows; row++) {
        if (!is_valid(&c, row)) continue; /* no tags: nothing to judge */
        int64_t first, last;
        items_of(&c, row, &first, &last);
        for (int64_t item = first; item < last; item++) {
            Py_ssize_t n;
            const uint8_t *tag = item_at(&c, item, &n);
            if (!tag || suspect_tag(tag, n, max_length)) { /* a null tag is judged too */
                found[count++] = row;
                break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    return rows_found(&c, found, count);
}

/* The characters of UTF-8 text: its bytes that do not continue a sequence. */
static Py_ssize_t utf8_length(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++) count += (s[i] & 0xC0) != 0x80;
    return count;
}

/* Whether a text value may break a rule: empty when required, more than max_chars characters
 * (max_chars >= 0), or not UTF-8 (known to be UTF-8 when `ascii`). */
static int suspect_text(const uint8_t *s, Py_ssize_t n, int ascii, int required,
                        Py_ssize_t max_chars) {
    if (required && n == 0) return 1;
    if (ascii) return max_chars >= 0 && n > max_chars;
    if (!is_utf8(s, n)) return 1;
    return max_chars >= 0 && n > max_chars && utf8_length(s, n) > max_chars;
}

/* Whether a row of a column may break a rule (see suspect_rows); `ascii`: all its text is. */
static int suspect_row(const Column *c, Py_ssize_t row, int ascii, int required,
                       Py_ssize_t max_chars, Py_ssize_t max_items, int64_t low, int64_t high) {
    if (!is_valid(c, row)) return required;
    Py_ssize_t n;
    const uint8_t *s;
    switch (c->kind) {
    case K_STR:
        s = text_at(c, row, &n);
        return suspect_text(s, n, ascii, required, max_chars);
    case K_DOUBLE:
        return !isfinite(((const double *)c->data.buf)[c->offset + row]);
    case K_UINT:
        return ((const uint64_t *)c->data.buf)[c->offset + row] > (uint64_t)INT64_MAX;
    case K_TS: {
        int64_t v = ((const int64_t *)c->data.buf)[c->offset + row];
        return v < low || v >= high;
    }
    case K_LIST: {
        int64_t first, last;
        items_of(c, row, &first, &last);
        if (max_items >= 0 && last - first > max_items) return 1;
        for (int64_t item = first; item < last; item++) {
            s = item_at(c, item, &n);
            if (!s || suspect_text(s, n, ascii, 0, max_chars)) return 1; /* a null item too */
        }
        return 0;
    }
    default: /* K_INT: every value is valid */
        return 0;
    }
}

PyDoc_STRVAR(suspect_rows_doc,
             "suspect_rows(column, rows, required, max_chars, max_items, low, high)\n--\n\n"
             "The rows of a column that may break a rule, in order: null or empty when "
             "required; text (or a list's item) that is not UTF-8 or longer than max_chars "
             "characters (when >= 0); a list longer than max_items (when >= 0) or with a null "
             "item; a float64 that is not finite; a uint64 above 2**63 - 1; a timestamp outside "
             "[low, high). The record rules then judge each one.");

static PyObject *suspect_rows(PyObject *self, PyObject *args) {
    PyObject *spec;
    Py_ssize_t rows, max_chars, max_items;
    int required;
    long long low, high;
    Column c;
    if (!PyArg_ParseTuple(args, "OnpnnLL", &spec, &rows, &required, &max_chars, &max_items,
                          &low, &high))
        return NULL;
    unsigned kinds = 1u << K_STR | 1u << K_DOUBLE | 1u << K_UINT | 1u << K_TS | 1u << K_LIST |
                     1u << K_INT;
    if (parse_column_of(spec, &c, kinds, "checkable values", rows) < 0) return NULL;
    Py_ssize_t *found = row_room(&c, rows);
    if (!found) return NULL;
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    int ascii = (c.kind == K_STR || c.kind == K_LIST) && rows_are_ascii(&c, rows);
    for (Py_ssize_t row = 0; row < rows; row++)
        if (suspect_row(&c, row, ascii, required, max_chars, max_items, (int64_t)low,
                        (int64_t)high))
            found[count++] = row;
    Py_END_ALLOW_THREADS
    return rows_found(&c, found, count);
}

PyDoc_STRVAR(fixed_doubles_doc,
             "fixed_doubles(column, rows)\n--\n\n"
             "Whether every valid float64 of the column reads back from at most 8 decimals "
             "(then it can be written as K_DOUBLE).");

static PyObject *fixed_doubles(PyObject *self, PyObject *args) {
    PyObject *spec;
    Py_ssize_t rows;
    Column c;
    if (!PyArg_ParseTuple(args, "On", &spec, &rows)) return NULL;
    if (parse_column_of(spec, &c, 1u << K_DOUBLE, "float64 values", rows) < 0) return NULL;
    int fixed = 1;
    const double *values = (const double *)c.data.buf + c.offset;
    Py_BEGIN_ALLOW_THREADS
    int64_t digits;
    for (Py_ssize_t row = 0; row < rows && fixed; row++)
        fixed = !is_valid(&c, row) || fixed_decimals(values[row], &digits) >= 0;
    Py_END_ALLOW_THREADS
    release_column(&c);
    return PyBool_FromLong(fixed);
}

PyDoc_STRVAR(sorted_share_doc,
             "sorted_share(a, b)\n--\n\n"
             "Whether two buffers of ascending uint64 values hold a value in common (one merge).");

static PyObject *sorted_share(PyObject *self, PyObject *args) {
    Py_buffer a, b;
    if (!PyArg_ParseTuple(args, "y*y*", &a, &b)) return NULL;
    const uint64_t *x = a.buf, *y = b.buf;
    Py_ssize_t n = a.len / (Py_ssize_t)sizeof(uint64_t), m = b.len / (Py_ssize_t)sizeof(uint64_t);
    int shared = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t i = 0, j = 0;
    while (i < n && j < m) { /* no branch on which side moves: hashes are random */
        uint64_t u = x[i], v = y[j];
        if (u == v) {
            shared = 1;
            break;
        }
        i += u < v;
        j += v < u;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return PyBool_FromLong(shared);
}

static PyMethodDef methods[] = {
    {"fixed_doubles", fixed_doubles, METH_VARARGS, fixed_doubles_doc},
    {"suspect_tag_rows", suspect_tag_rows, METH_VARARGS, suspect_tag_rows_doc},
    {"suspect_rows", suspect_rows, METH_VARARGS, suspect_rows_doc},
    {"sorted_share", sorted_share, METH_VARARGS, sorted_share_doc},
    {"write_chunks", write_chunks, METH_VARARGS, write_chunks_doc},
    {"first_not_utf8", first_not_utf8, METH_VARARGS, first_not_utf8_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups",
    "Optional accelerator of the columnar path: checked Arrow columns written as JSON.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&ArenaType) < 0 || PyType_Ready(&SlabType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Arena", (PyObject *)&ArenaType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
