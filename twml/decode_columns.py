"""Batch DataRecord -> column values in one native pass, for the features a job wants.

``decode_data_record`` validates a record in Python and builds thriftpy2 objects for every
feature, about 80 us for a reference-sized record; a job then keeps a few hundred of them.
``extract_columns`` walks a whole batch of serialized records (one uint8 buffer + offsets) in a
numba kernel that reads the Thrift binary protocol of ``DataRecord`` directly and writes only
the wanted features:

- continuous (field 2, map<i64, double>) and discrete (field 3, map<i64, i64>) values of the
  wanted ids into ``[B, n]`` arrays with a ``present`` mask; a key repeated in the map keeps its
  last value, as the dict thriftpy2 builds does;
- for sparse-binary (field 5, map<i64, set<string>>) ids, where each wanted id's string set
  starts (its last occurrence) and how many strings it holds; ``sparse_binary_column`` then
  hashes them into libtwml ids (``feature id XOR h``, ``h = 31 * h + byte`` as int32,
  sign-extended), every string kept (thriftpy2 hands a set back as a list, duplicates and all),
  each row sorted.

Every other field is skipped generically. The kernel applies the same checks as
``twml.decode.validate_struct`` (bounds of every length and count times the element's smallest
wire size, real type ids, the schema's types for the known fields, nesting depth, nothing after
the struct) and *flags* any record it is not certain the validator and thriftpy2 would read to
the same values: any failed check, a repeated known field (thriftpy2 keeps only the last
occurrence), and non-empty ``tensors`` / ``sparseTensors`` (schema structs with required fields
it does not model). A flagged record is not an error: the caller decodes it with
``decode_data_record``, which gives the exact value or error. The kernel only reads inside the
buffer, allocates nothing per record, and does work linear in the record's bytes.

numba is optional: ``AVAILABLE`` is False without it (or when the compiled kernel fails its
first-use check against ``decode_data_record``, with a warning), and callers use the slow path.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from twml.decode import MAX_DEPTH
from twml.native_check import FirstUseCheck

__all__ = ["AVAILABLE", "ExtractedColumns", "pack_records", "extract_columns", "sparse_binary_column",
           "native_ready"]


class ExtractedColumns(NamedTuple):
    """What ``extract_columns`` found in a batch of B records.

    continuous: float64 [B, nc], values of the wanted continuous ids in the caller's layout
      (0 where absent).
    continuous_present: bool [B, nc].
    discrete: int64 [B, nd]; discrete_present: bool [B, nd].
    sparse_pos: int64 [B, ns], buffer position of the first string of each wanted sparse-binary
      id's set (-1: absent); sparse_count: int64 [B, ns], its number of strings.
    flagged: bool [B], records to decode with ``decode_data_record`` instead.
    """
    continuous: np.ndarray
    continuous_present: np.ndarray
    discrete: np.ndarray
    discrete_present: np.ndarray
    sparse_pos: np.ndarray
    sparse_count: np.ndarray
    flagged: np.ndarray


def pack_records(records: Sequence[bytes]):
    """(uint8 buffer of all records back to back, int64 [B + 1] offsets)."""
    lengths = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.frombuffer(b"".join(records), dtype=np.uint8), offsets


_WALK: Optional[Callable] = None
_SPARSE: Optional[Callable] = None

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic
except ImportError:   # pragma: no cover - numba is a dependency; the slow path covers its absence
    njit = None

if njit is not None:
    # Thrift binary type ids, smallest wire sizes (0: not a type id) and fixed sizes (0: not fixed).
    _MIN_SIZE = np.zeros(256, dtype=np.int64)
    _FIXED = np.zeros(256, dtype=np.int64)
    for _t, _m in ((2, 1), (3, 1), (4, 8), (6, 2), (8, 4), (10, 8), (11, 4), (12, 1), (13, 6), (14, 5), (15, 5)):
        _MIN_SIZE[_t] = _m
    for _t, _m in ((2, 1), (3, 1), (4, 8), (6, 2), (8, 4), (10, 8)):
        _FIXED[_t] = _m
    _STRUCT, _MAP, _LIST = 1, 2, 3

    @njit(inline="always")
    def _i32(buf, p):
        v = (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) \
            | np.int64(buf[p + 3])
        return v - (np.int64(1) << 32) if v >= (np.int64(1) << 31) else v

    @intrinsic
    def _u64(typingctx, data, index):
        """The 8 bytes data[index:index + 8] as a big-endian uint64 (unaligned load + bswap); the
        caller has checked the bounds."""
        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            word = ir.IntType(64)
            pointer = builder.bitcast(builder.gep(array.data, [args[1]]), word.as_pointer())
            loaded = builder.load(pointer, align=1)
            bswap = builder.module.declare_intrinsic("llvm.bswap", [word])
            return builder.call(bswap, [loaded])
        return types.uint64(data, types.intp), codegen

    @njit(inline="always")
    def _count(buf, p, end, per_item):
        """A container/string size at p checked against the bytes left; -1 if it does not fit."""
        if p + 4 > end:
            return -1
        n = _i32(buf, p)
        if n < 0 or n * per_item > end - p - 4:
            return -1
        return n

    @njit(inline="always")
    def _slot_of(keys, slots, shift, key):
        """Open-addressing lookup (Fibonacci hashing, linear probing): the slot of ``key`` or -1."""
        mask = keys.shape[0] - 1
        h = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(shift))
        while True:
            slot = slots[h]
            if slot < 0 or keys[h] == key:
                return slot
            h = (h + 1) & mask

    @njit(inline="always")
    def _table(ids, out):
        """A lookup table of ``ids`` -> out[k] (at least 2 empty entries per id)."""
        bits = 2
        while (1 << bits) < 4 * ids.shape[0]:
            bits += 1
        keys = np.zeros(1 << bits, dtype=np.int64)
        slots = np.full(1 << bits, -1, dtype=np.int64)
        shift = 64 - bits
        for k in range(ids.shape[0]):
            h = np.int64((np.uint64(ids[k]) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(shift))
            while slots[h] >= 0:
                h = (h + 1) & ((1 << bits) - 1)
            keys[h] = ids[k]
            slots[h] = out[k]
        return keys, slots, shift

    @njit(cache=True, nogil=True)
    def _skip(buf, pos, end, ttype, depth, min_size, fixed, kinds, left, elem_a, elem_b, depths):
        """Skip one value of wire type ``ttype`` at ``depth`` (as validate_struct checks a value of
        a field the schema does not know); the position after it, or -1. Iterative: the stack
        arrays hold at most MAX_DEPTH frames."""
        sp = 0
        while True:
            # -- the value of type ttype at pos, depth
            size = fixed[ttype]
            if size:
                if pos + size > end:
                    return -1
                pos += size
            elif ttype == 11:
                n = _count(buf, pos, end, 1)
                if n < 0:
                    return -1
                pos += 4 + n
            else:
                if depth >= MAX_DEPTH:
                    return -1
                if ttype == 12:
                    kinds[sp] = _STRUCT
                    depths[sp] = depth
                    sp += 1
                elif ttype == 13:
                    if pos + 2 > end:
                        return -1
                    k, v = buf[pos], buf[pos + 1]
                    if min_size[k] == 0 or min_size[v] == 0:
                        return -1
                    n = _count(buf, pos + 2, end, min_size[k] + min_size[v])
                    if n < 0:
                        return -1
                    pos += 6
                    if fixed[k] and fixed[v]:
                        pos += n * (fixed[k] + fixed[v])
                    elif n:
                        kinds[sp], left[sp], elem_a[sp], elem_b[sp], depths[sp] = _MAP, 2 * n, k, v, depth
                        sp += 1
                else:   # 14, 15: set, list
                    if pos + 1 > end:
                        return -1
                    e = buf[pos]
                    if min_size[e] == 0:
                        return -1
                    n = _count(buf, pos + 1, end, min_size[e])
                    if n < 0:
                        return -1
                    pos += 5
                    if fixed[e]:
                        pos += n * fixed[e]
                    elif n:
                        kinds[sp], left[sp], elem_a[sp], depths[sp] = _LIST, n, e, depth
                        sp += 1
            # -- the next value to read, closing finished containers
            while True:
                if sp == 0:
                    return pos
                top = sp - 1
                if kinds[top] == _STRUCT:
                    if pos >= end:
                        return -1
                    f = buf[pos]
                    if f == 0:
                        pos += 1
                        sp -= 1
                        continue
                    if min_size[f] == 0 or pos + 3 > end:
                        return -1
                    pos += 3
                    ttype = f
                elif left[top] == 0:
                    sp -= 1
                    continue
                elif kinds[top] == _MAP:
                    ttype = elem_a[top] if left[top] % 2 == 0 else elem_b[top]
                    left[top] -= 1
                else:
                    ttype = elem_a[top]
                    left[top] -= 1
                depth = depths[top] + 1
                break

    @njit(inline="always")
    def _map_header(buf, pos, end, key, value, per_item):
        """Count of a map<key, value> at pos (header checked as the schema says), or -1."""
        if pos + 2 > end or buf[pos] != key or buf[pos + 1] != value:
            return -1
        return _count(buf, pos + 2, end, per_item)

    @njit(inline="always")
    def _strings(buf, pos, end, n):
        """Skip n strings at pos; the position after them or -1."""
        for _ in range(n):
            m = _count(buf, pos, end, 1)
            if m < 0:
                return -1
            pos += 4 + m
        return pos

    @njit(inline="always")
    def _record(buf, pos, end, ct, disc_t, sb_t, row, cont_bits, cont_present,
                disc_vals, disc_present, sb_pos, sb_count, min_size, fixed, kinds, left, elem_a, elem_b, depths):
        """Walk one DataRecord in buf[pos:end]; True if it is certainly read as the validator and
        thriftpy2 read it (outputs for ``row`` written), False to flag it."""
        if pos >= end:
            return False
        seen = 0
        while True:
            if pos >= end:
                return False
            ftype = buf[pos]
            if ftype == 0:
                return pos + 1 == end
            if min_size[ftype] == 0 or pos + 3 > end:
                return False
            fid = (np.int64(buf[pos + 1]) << 8) | np.int64(buf[pos + 2])
            if fid >= 32768:
                fid -= 65536
            pos += 3
            if 1 <= fid <= 9:
                if seen & (1 << fid):
                    return False         # thriftpy2 keeps the last occurrence only
                seen |= 1 << fid
                if ftype != (14 if fid == 1 else 13):
                    return False
            if fid == 2 or fid == 3:
                n = _map_header(buf, pos, end, 10, 4 if fid == 2 else 10, 16)
                if n < 0:
                    return False
                pos += 6
                if fid == 2:
                    for _ in range(n):
                        slot = _slot_of(ct[0], ct[1], ct[2], np.int64(_u64(buf, pos)))
                        if slot >= 0:
                            cont_bits[row, slot] = _u64(buf, pos + 8)
                            cont_present[row, slot] = True
                        pos += 16
                else:
                    for _ in range(n):
                        slot = _slot_of(disc_t[0], disc_t[1], disc_t[2], np.int64(_u64(buf, pos)))
                        if slot >= 0:
                            disc_vals[row, slot] = np.int64(_u64(buf, pos + 8))
                            disc_present[row, slot] = True
                        pos += 16
            elif fid == 5:
                n = _map_header(buf, pos, end, 10, 14, 13)
                if n < 0:
                    return False
                pos += 6
                for _ in range(n):
                    if pos + 8 + 1 > end or buf[pos + 8] != 11:
                        return False
                    key = np.int64(_u64(buf, pos))
                    m = _count(buf, pos + 9, end, 4)
                    if m < 0:
                        return False
                    first = pos + 13
                    pos = _strings(buf, first, end, m)
                    if pos < 0:
                        return False
                    k = _slot_of(sb_t[0], sb_t[1], sb_t[2], key)
                    if k >= 0:
                        sb_pos[row, k] = first
                        sb_count[row, k] = m
            elif fid == 1:
                if pos + 1 > end or buf[pos] != 10:
                    return False
                n = _count(buf, pos + 1, end, 8)
                if n < 0:
                    return False
                pos += 5 + 8 * n
            elif fid == 4 or fid == 7:       # map<i64, string>, map<i64, binary>
                n = _map_header(buf, pos, end, 10, 11, 12)
                if n < 0:
                    return False
                pos += 6
                for _ in range(n):
                    pos = _strings(buf, pos + 8, end, 1)   # the count check covers the key
                    if pos < 0:
                        return False
            elif fid == 6:                    # map<i64, map<string, double>>
                n = _map_header(buf, pos, end, 10, 13, 14)
                if n < 0:
                    return False
                pos += 6
                for _ in range(n):
                    m = _map_header(buf, pos + 8, end, 11, 4, 12)
                    if m < 0:
                        return False
                    pos += 14
                    for _ in range(m):
                        pos = _strings(buf, pos, end, 1)
                        if pos < 0 or pos + 8 > end:
                            return False
                        pos += 8
            elif fid == 8 or fid == 9:        # map<i64, GeneralTensor / SparseTensor>
                n = _map_header(buf, pos, end, 10, 12, 9)
                if n != 0:
                    return False              # structs with required fields: the slow path checks them
                pos += 6
            else:                             # a field the schema does not know
                pos = _skip(buf, pos, end, ftype, 1, min_size, fixed, kinds, left, elem_a, elem_b, depths)
                if pos < 0:
                    return False

    @njit(cache=True, nogil=True)
    def _walk_kernel(buf, offsets, cont_ids, cont_slot, disc_ids, disc_slot, sb_ids, min_size, fixed, cont_bits,
                     cont_present, disc_vals, disc_present, sb_pos, sb_count, flagged):
        kinds = np.zeros(MAX_DEPTH + 2, dtype=np.int64)
        left = np.zeros(MAX_DEPTH + 2, dtype=np.int64)
        elem_a = np.zeros(MAX_DEPTH + 2, dtype=np.uint8)
        elem_b = np.zeros(MAX_DEPTH + 2, dtype=np.uint8)
        depths = np.zeros(MAX_DEPTH + 2, dtype=np.int64)
        cont_t = _table(cont_ids, cont_slot)
        disc_t = _table(disc_ids, disc_slot)
        sb_t = _table(sb_ids, np.arange(sb_ids.shape[0]))
        for row in range(offsets.shape[0] - 1):
            ok = _record(buf, offsets[row], offsets[row + 1], cont_t, disc_t, sb_t, row, cont_bits, cont_present,
                         disc_vals, disc_present, sb_pos, sb_count, min_size, fixed, kinds, left, elem_a, elem_b,
                         depths)
            flagged[row] = not ok

    @njit(cache=True, nogil=True)
    def _sparse_kernel(buf, sb_pos, sb_count, ks, fids, rows, row_offsets, ids):
        """ids[row_offsets[i]:row_offsets[i + 1]] := the sorted ids of row rows[i] for the sparse
        columns ks (feature ids fids)."""
        for i in range(rows.shape[0]):
            r = rows[i]
            out = row_offsets[i]
            for j in range(ks.shape[0]):
                k = ks[j]
                pos = sb_pos[r, k]
                if pos < 0:
                    continue
                fid = fids[j]
                for _ in range(sb_count[r, k]):
                    m = _i32(buf, pos)
                    pos += 4
                    h = np.int64(0)
                    b, stop = pos, pos + m
                    while b + 4 <= stop:   # four steps of h = 31 h + byte at once (31^4 = 923521)
                        h = (h * 923521 + np.int64(buf[b]) * 29791 + np.int64(buf[b + 1]) * 961
                             + np.int64(buf[b + 2]) * 31 + np.int64(buf[b + 3])) & 0xFFFFFFFF
                        b += 4
                    while b < stop:
                        h = (h * 31 + np.int64(buf[b])) & 0xFFFFFFFF
                        b += 1
                    if h >= 0x80000000:
                        h -= 0x100000000
                    ids[out] = fid ^ h
                    out += 1
                    pos += m
            ids[row_offsets[i]:out].sort()

    _WALK, _SPARSE = _walk_kernel, _sparse_kernel

AVAILABLE = _WALK is not None
"""Whether the native kernels can be used (numba imported; first-use check not failed yet)."""


def extract_columns(buf: np.ndarray, offsets: np.ndarray, continuous_ids: np.ndarray, discrete_ids: np.ndarray,
                    sparse_ids: np.ndarray) -> ExtractedColumns:
    """Walk the records ``buf[offsets[i]:offsets[i + 1]]`` and pick out the wanted features.

    Args:
      buf, offsets: the records (``pack_records``).
      continuous_ids, discrete_ids: int64 ids wanted from fields 2 and 3, in the layout the
        caller wants (output column j holds ids[j]; an id may appear more than once), so that a
        feature column is a slice of the output.
      sparse_ids: sorted, unique int64 ids wanted from field 5 (output column k is ids[k]).
    Returns:
      ExtractedColumns; rows with ``flagged`` set hold no meaningful values.
    Raises:
      RuntimeError if the kernels are unavailable (check ``native_ready()`` first).
    """
    if not native_ready():
        raise RuntimeError("twml.decode_columns: the numba kernels are unavailable")
    return _extract(buf, offsets, continuous_ids, discrete_ids, sparse_ids)


def _layout(ids: np.ndarray):
    """(sorted unique ids, the output column of each: its first place in ``ids``, the places
    holding a repeat, the first place of each repeat)."""
    unique, first = np.unique(ids, return_index=True)
    source = first[np.searchsorted(unique, ids)] if len(ids) else first
    repeats = np.flatnonzero(source != np.arange(len(ids)))
    return unique, first.astype(np.int64), repeats, source[repeats]


def _extract(buf, offsets, continuous_ids, discrete_ids, sparse_ids) -> ExtractedColumns:
    batch = len(offsets) - 1
    if batch < 0 or offsets[0] < 0 or offsets[-1] > len(buf) or np.any(np.diff(offsets) < 0):
        raise ValueError(f"extract_columns: offsets must rise from >= 0 to <= the buffer's {len(buf)} bytes")
    cont, disc, sb = (np.ascontiguousarray(a, dtype=np.int64).reshape(-1)
                      for a in (continuous_ids, discrete_ids, sparse_ids))
    if len(sb) > 1 and not np.all(sb[1:] > sb[:-1]):
        raise ValueError("extract_columns: sparse feature ids must be sorted and unique")
    cont_ids, cont_slot, cont_repeats, cont_from = _layout(cont)
    disc_ids, disc_slot, disc_repeats, disc_from = _layout(disc)
    cont_bits = np.zeros((batch, len(cont)), dtype=np.uint64)
    cont_present = np.zeros((batch, len(cont)), dtype=np.bool_)
    disc_vals = np.zeros((batch, len(disc)), dtype=np.int64)
    disc_present = np.zeros((batch, len(disc)), dtype=np.bool_)
    sb_pos = np.full((batch, len(sb)), -1, dtype=np.int64)
    sb_count = np.zeros((batch, len(sb)), dtype=np.int64)
    flagged = np.zeros(batch, dtype=np.bool_)
    if batch:
        _WALK(np.ascontiguousarray(buf, dtype=np.uint8), np.ascontiguousarray(offsets, dtype=np.int64),
              cont_ids, cont_slot, disc_ids, disc_slot, sb, _MIN_SIZE, _FIXED, cont_bits, cont_present,
              disc_vals, disc_present, sb_pos, sb_count, flagged)
    for out in (cont_bits, cont_present):
        out[:, cont_repeats] = out[:, cont_from]
    for out in (disc_vals, disc_present):
        out[:, disc_repeats] = out[:, disc_from]
    return ExtractedColumns(cont_bits.view(np.float64), cont_present, disc_vals, disc_present, sb_pos, sb_count,
                            flagged)


def sparse_binary_column(buf: np.ndarray, extracted: ExtractedColumns, columns: np.ndarray,
                         feature_ids: np.ndarray, rows: np.ndarray):
    """The hashed ids of one sparse-binary column for the records ``rows``.

    Args:
      buf: the buffer given to ``extract_columns``.
      extracted: its result.
      columns: int64 indices into its ``sparse_ids`` of the column's features, in column order.
      feature_ids: int64, those features' ids.
      rows: int64 indices of the (unflagged) records wanted, in output order.
    Returns:
      (int32 offsets [len(rows) + 1], int64 ids), each row's ids sorted ascending.
    """
    columns = np.ascontiguousarray(columns, dtype=np.int64)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    counts = extracted.sparse_count[rows][:, columns].sum(axis=1) if len(columns) else np.zeros(len(rows), np.int64)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    ids = np.empty(int(offsets[-1]), dtype=np.int64)
    if len(rows) and len(columns):
        _SPARSE(np.ascontiguousarray(buf, dtype=np.uint8), extracted.sparse_pos, extracted.sparse_count, columns,
                np.ascontiguousarray(feature_ids, dtype=np.int64), rows, offsets, ids)
    return offsets.astype(np.int32), ids


def _first_call_check() -> Optional[str]:
    """Why the kernels cannot be used (compile error or a result differing from
    ``decode_data_record``), or None."""
    try:
        from twml.decode import decode_data_record
        from twml.schema import data_thrift, serialize
        record = data_thrift.DataRecord(binaryFeatures={1}, continuousFeatures={3: -1.5, 4: 2.0},
                                        discreteFeatures={5: -7}, sparseBinaryFeatures={6: {"ab", "é"}},
                                        stringFeatures={9: "s"})
        data = serialize(record)
        buf, offsets = pack_records([data, data[:-1]])
        got = _extract(buf, offsets, np.array([8, 3, 8]), np.array([5]), np.array([6]))
        offs, ids = sparse_binary_column(buf, got, np.array([0]), np.array([6]), np.array([0]))
        expected_ids = sorted(6 ^ _java_hash(s.encode()) for s in ("ab", "é"))
        if not (list(got.flagged) == [False, True] and got.continuous[0, 1] == -1.5
                and list(got.continuous_present[0]) == [False, True, False] and got.discrete[0, 0] == -7
                and list(offs) == [0, 2] and list(ids) == expected_ids
                and decode_data_record(data).continuousFeatures[3] == -1.5):
            return "results differ from decode_data_record"
    except Exception as exc:   # a numba/LLVM failure must not stop the pipeline
        return f"{type(exc).__name__}: {exc}"
    return None


def _java_hash(data: bytes) -> int:
    h = 0
    for byte in data:
        h = (31 * h + byte) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def native_ready() -> bool:
    """Compile (or load from numba's cache) and check the kernels once; False (with a warning
    the first time) when they are unusable."""
    return AVAILABLE and _NATIVE.passed()


def _drop_kernels() -> None:
    global AVAILABLE
    AVAILABLE = False


_NATIVE = FirstUseCheck("decode_columns", _first_call_check, "decoding records one by one", _drop_kernels)
