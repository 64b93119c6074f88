"""User keys: integer or string columns, and what a string key becomes in the record.

An integer key column is exported as it is (int64). A string key column (Arrow string,
large_string, binary or large_binary: Parquet BYTE_ARRAY with or without the UTF8 annotation)
is exported as the string itself plus an int64 id derived from it
(``twml.feature_ids.string_key_ids``); the id is what shards, duplicate counts and twml
consumers that need an integer use. The rules are written down in docs/FORMAT.md section 5.

A string key must be UTF-8 and non-empty; rows that are not are rejected with
``EMPTY_KEY`` / ``INVALID_UTF8_KEY`` (nulls with ``null_key``, as for integer keys).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.arrow_columns import as_array, to_numpy
from twml.feature_ids import string_key_ids

__all__ = ["EMPTY_KEY", "INVALID_UTF8_KEY", "KEY_ID_SUFFIX", "is_string_key_type", "is_integer_key_type",
           "empty_key_rows", "invalid_utf8_rows", "key_arrays", "default_key_id_feature"]

EMPTY_KEY = "empty_key"
INVALID_UTF8_KEY = "invalid_utf8_key"
# The key-id feature of string keys, unless output.key_id_feature names another: "<key_feature>.id".
KEY_ID_SUFFIX = ".id"


def default_key_id_feature(key_feature: str) -> str:
    """The feature the int64 id of a string key is stored under when the config names none."""
    return key_feature + KEY_ID_SUFFIX


def is_string_key_type(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type))


def is_integer_key_type(arrow_type: pa.DataType) -> bool:
    """Integer types whose every value fits int64 (uint64 does not)."""
    return pa.types.is_integer(arrow_type) and arrow_type != pa.uint64()


def _as_binary(array: pa.Array) -> pa.Array:
    """The key bytes as (large_)binary, without validating them as UTF-8."""
    if pa.types.is_string(array.type):
        return array.view(pa.binary())
    if pa.types.is_large_string(array.type):
        return array.view(pa.large_binary())
    return array


def empty_key_rows(column) -> np.ndarray:
    """bool [B]: rows whose string key is the empty string (nulls are not empty)."""
    array = _as_binary(as_array(column))
    return to_numpy(pc.equal(pc.binary_length(array), 0).fill_null(False))


def invalid_utf8_rows(column) -> np.ndarray:
    """bool [B]: rows whose string key bytes are not valid UTF-8 (nulls are valid)."""
    array = as_array(column)
    bad = np.zeros(len(array), dtype=bool)
    binary = _as_binary(array)
    try:
        binary.view(pa.large_string() if pa.types.is_large_binary(binary.type) else pa.string()).validate(full=True)
        return bad
    except pa.ArrowInvalid:
        pass
    for i, value in enumerate(binary.to_pylist()):  # rare: find the rows one by one
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
    return bad


def key_arrays(column) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(int64 [B] keys, None) for an integer key column; (int64 [B] key ids, object [B] of the
    keys' UTF-8 bytes) for a string key column (already validated: no nulls, UTF-8)."""
    array = as_array(column)
    if not is_string_key_type(array.type):
        return to_numpy(array).astype(np.int64, copy=False), None
    strings = np.asarray(_as_binary(array).to_pylist(), dtype=object)
    return string_key_ids(strings), strings
