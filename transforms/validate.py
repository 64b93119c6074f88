"""Validate rows against what the model can take, and re-chunk the good ones to the model batch size.

A row the model cannot be fed (null key, null or wrong-length list, null or non-finite value,
an id that does not fit the input dtype, a bad partition id) goes to the ``rejected`` output with
the reason of its first failing check, as an Arrow table of its columns plus ``reason``,
``source_file`` and ``source_row`` (its 0-based index in that file). All checks are vectorised
over the Arrow table (pyarrow.compute and numpy).

Readers tag every row with its index in its file (the hidden SOURCE_ROW_TAG column, ``tag_rows``);
good rows keep that tag and their file (SOURCE_TAG) through batching, so rows the embed step
rejects later name their place in the input too. ``source_file`` and ``source_row`` are what
``transforms.rejected_columns`` uses to restore the input columns the job did not read.

The good rows of each table are cut into batches of ``batch_size`` rows (the last one shorter).
Batches never span two input tables: a table is one Parquet row group whatever the runner's
bundling or splitting, so every runner feeds the model the same batches. That matters because a
model's float results for a row depend on where the row sits in its batch (BLAS blocking), and
the export promises the same records on every run and runner. Each element also emits its row
count to ``rows_read`` so the job counts rows from the data, not from metrics (which not every
runner reports reliably). Nothing is held across elements and nothing is emitted from
``finish_bundle`` (which some runners, e.g. Dask, drop).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

import transforms.elements  # noqa: F401  registers the coder of pa.Table that our outputs use
from transforms.arrow_columns import as_array, list_values_and_lengths, to_numpy
from transforms.keys import EMPTY_KEY, INVALID_UTF8_KEY, empty_key_rows, invalid_utf8_rows, is_string_key_type
from transforms.rejected import REJECTED, rejected_table, source_rows, tag_source
from transforms.specs import KIND_FIXED, KIND_SCALAR, InputSpec, PartitionSpec

__all__ = ["ValidationRules", "ValidateAndBatch", "row_problems", "ROWS_READ", "METRICS_NAMESPACE", "conform"]

ROWS_READ = "rows_read"
METRICS_NAMESPACE = "EmbeddingExport"

# A check: (reason, function from the table to a bool [B] mask of the rows that fail it).
Check = Tuple[str, Callable[[pa.Table], np.ndarray]]


@dataclass(frozen=True)
class ValidationRules:
    """What a row needs to be exported.

    Args:
      key_column: the user-key column (integer, or string: ``transforms.keys``).
      inputs: the signature inputs and their columns.
      partition: shard count and optional partition-id column.
      schema: the columns read, with their types (every input table is cast to it, so tables
        from different files concatenate into one batch).
    """
    key_column: str
    inputs: Tuple[InputSpec, ...]
    partition: PartitionSpec
    schema: pa.Schema

    def checks(self) -> List[Check]:
        """The checks in the order they are applied (a row's reason is its first failure)."""
        checks: List[Check] = [("null_key", _null_rows(self.key_column))]
        if is_string_key_type(self.schema.field(self.key_column).type):
            key = self.key_column
            checks += [(EMPTY_KEY, lambda t: empty_key_rows(t.column(key))),
                       (INVALID_UTF8_KEY, lambda t: invalid_utf8_rows(t.column(key)))]
        pcol = self.partition.column
        if pcol is not None:
            checks += [("null_partition_id", _null_rows(pcol)),
                       ("bad_partition_id", _outside_rows(pcol, 0, self.partition.num_shards - 1))]
        seen = set()
        for spec in self.inputs:
            for reason, check in _input_checks(spec, self.schema.field(spec.column).type):
                if reason not in seen:
                    seen.add(reason)
                    checks.append((reason, check))
        return checks


# ------------------------------------------------------------------------------------------------
# Pure functions: the checks.

def _null_values(values: pa.Array) -> Optional[np.ndarray]:
    """bool mask of the null values, or None when there are none (the usual case: no mask built)."""
    return to_numpy(pc.is_null(values)) if values.null_count else None


def _non_finite_values(values: pa.Array) -> Optional[np.ndarray]:
    """bool mask of the NaN / infinite values, or None when all are finite.

    On the values' own dtype: converting to float64 first cost 3 us a row at 256 floats a row.
    """
    finite = np.isfinite(to_numpy(values))
    return None if finite.all() else ~finite


def _null_rows(column: str):
    def check(table: pa.Table) -> np.ndarray:
        array = as_array(table.column(column))
        if not array.null_count:
            return np.zeros(len(array), dtype=bool)
        return to_numpy(pc.is_null(array))
    return check


def _outside_rows(column: str, low: int, high: int):
    def check(table: pa.Table) -> np.ndarray:
        values = as_array(table.column(column))
        info = np.iinfo(_int_dtype(values.type)) if pa.types.is_integer(values.type) else None
        if info is not None:  # compare in the column's own type (bounds clipped to it)
            if low <= info.min and high >= info.max:
                return np.zeros(len(values), dtype=bool)
            return _outside_values(values.type, low if low > info.min else None,
                                   high if high < info.max else None)(values)
        outside = pc.or_(pc.less(values, low), pc.greater(values, high)).fill_null(False)
        return to_numpy(outside)
    return check


def _rows_of_bad_values(table: pa.Table, column: str,
                        bad_values: Callable[[pa.Array], Optional[np.ndarray]]) -> np.ndarray:
    """Rows of a list column holding at least one value for which ``bad_values`` is True
    (``bad_values`` may return None for "no bad value", skipping the mask)."""
    array = as_array(table.column(column))
    values, _ = list_values_and_lengths(array)
    bad = bad_values(values)
    rows = np.zeros(len(array), dtype=bool)
    if bad is not None and bad.any():
        parents = to_numpy(pc.list_parent_indices(array))
        rows[parents[bad]] = True
    return rows


def _int_dtype(arrow_type: pa.DataType) -> np.dtype:
    """numpy dtype of an Arrow integer type (without pyarrow's pandas-backed conversion)."""
    prefix = "int" if pa.types.is_signed_integer(arrow_type) else "uint"
    return np.dtype(f"{prefix}{arrow_type.bit_width}")


def _outside_values(value_type: pa.DataType, low: Optional[Union[int, float]],
                    high: Optional[Union[int, float]]) -> Callable[[pa.Array], Optional[np.ndarray]]:
    """A test for values below ``low`` or above ``high`` (None: no bound), compared in the
    values' own type (the bounds are within it), so no value makes the comparison itself fail:
    a uint64 of 2**64 - 1 against an int64 bound would not cast."""
    bounds = [(pc.less, pa.scalar(low, value_type)) if low is not None else None,
              (pc.greater, pa.scalar(high, value_type)) if high is not None else None]
    bounds = [b for b in bounds if b is not None]

    def test(values: pa.Array) -> Optional[np.ndarray]:
        masks = [compare(values, bound) for compare, bound in bounds]
        mask = masks[0] if len(masks) == 1 else pc.or_(*masks)
        return to_numpy(mask.fill_null(False))
    return test


def _value_checks(column: str, arrow_type: pa.DataType, target: np.dtype, in_list: bool) -> List[Check]:
    """Non-finite floats, and values that do not fit ``target`` (integers outside its range,
    finite float64 values beyond float32's), for a scalar or list column."""
    value_type = arrow_type.value_type if in_list else arrow_type
    tests: List[Tuple[str, Callable[[pa.Array], np.ndarray]]] = []
    if pa.types.is_floating(value_type):
        tests.append((f"non_finite:{column}", _non_finite_values))
        if target.kind == "f" and np.finfo(target).bits < value_type.bit_width:
            largest = float(np.finfo(target).max)
            tests.append((f"out_of_range:{column}", _outside_values(value_type, -largest, largest)))
    if pa.types.is_integer(value_type) and target.kind in "iu":
        info = np.iinfo(target)
        source = np.iinfo(_int_dtype(value_type))
        if source.min < info.min or source.max > info.max:
            tests.append((f"out_of_range:{column}", _outside_values(
                value_type, int(info.min) if source.min < info.min else None,
                int(info.max) if source.max > info.max else None)))
    checks: List[Check] = []
    for reason, test in tests:
        if in_list:
            checks.append((reason, lambda t, test=test: _rows_of_bad_values(t, column, test)))
        else:
            checks.append((reason, lambda t, test=test: test(as_array(t.column(column)))))
    return checks


def _input_checks(spec: InputSpec, arrow_type: pa.DataType) -> List[Check]:
    column = spec.column
    if spec.kind == KIND_SCALAR:
        return [(f"null_value:{column}", _null_rows(column))] + _value_checks(
            column, arrow_type, spec.np_dtype, in_list=False)
    checks: List[Check] = [(f"null_list:{column}", _null_rows(column))]
    if spec.kind == KIND_FIXED:
        length = spec.length

        def wrong_length(table: pa.Table) -> np.ndarray:
            _, lengths = list_values_and_lengths(as_array(table.column(column)))
            return lengths != length
        checks.append((f"wrong_length:{column}:{length}", wrong_length))
    checks.append((f"null_element:{column}",
                   lambda t: _rows_of_bad_values(t, column, _null_values)))
    return checks + _value_checks(column, arrow_type, spec.np_dtype, in_list=True)


def row_problems(table: pa.Table, checks: Sequence[Check]) -> np.ndarray:
    """int32 [B]: 0 for a good row, else 1 + the index of the row's first failing check."""
    codes = np.zeros(table.num_rows, dtype=np.int32)
    for i, (_, check) in enumerate(checks):
        failing = check(table) & (codes == 0)
        codes[failing] = i + 1
    return codes


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table's columns of ``schema``, in its order and with its types and no metadata."""
    table = table.select(schema.names)
    if not table.schema.equals(schema, check_metadata=False):
        table = table.cast(schema)
    return table.replace_schema_metadata(None)


# ------------------------------------------------------------------------------------------------

@beam.typehints.with_input_types(Tuple[str, pa.Table])
@beam.typehints.with_output_types(pa.Table, **{REJECTED: pa.Table, ROWS_READ: int})
class _ValidateAndBatchFn(beam.DoFn):
    def __init__(self, rules: ValidationRules, batch_size: int):
        self._rules = rules
        self._batch_size = batch_size
        self._rows_read = Metrics.counter(METRICS_NAMESPACE, "rows_read")
        self._rows_rejected = Metrics.counter(METRICS_NAMESPACE, "rows_rejected")
        self._checks: List[Check] = []
        self._reasons: List[str] = []

    def setup(self):
        self._checks = self._rules.checks()
        self._reasons = [reason for reason, _ in self._checks]
        self._schema = self._rules.schema.remove_metadata()

    def process(self, element: Tuple[str, pa.Table]):
        source, table = element
        rows = table.num_rows
        yield beam.pvalue.TaggedOutput(ROWS_READ, rows)
        if rows == 0:
            return
        self._rows_read.inc(rows)
        index = source_rows(table, source)
        try:
            table = conform(table, self._schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise ValueError(f"{source}: columns do not match the schema checked before launch "
                             f"({self._schema}): {err}") from err
        codes = row_problems(table, self._checks)
        bad = int(np.count_nonzero(codes))
        if bad:
            self._rows_rejected.inc(bad)
            for code, count in zip(*np.unique(codes[codes != 0], return_counts=True)):
                Metrics.counter(METRICS_NAMESPACE, f"rows_rejected.{self._reasons[code - 1]}").inc(int(count))
            yield beam.pvalue.TaggedOutput(REJECTED, rejected_table(table, codes, self._reasons, source, index))
            good = pa.array(codes == 0)
            table, index = table.filter(good), index.filter(good)
        size = self._batch_size
        table = tag_source(table, source, index)
        for start in range(0, table.num_rows, size):
            yield table.slice(start, size)


class ValidateAndBatch(beam.PTransform):
    """(source file, Arrow table with SOURCE_ROW_TAG) -> tables of at most ``batch_size`` good rows
    (the schema's columns plus SOURCE_TAG and SOURCE_ROW_TAG), never spanning two input tables;
    tagged outputs ``rejected`` (tables of bad rows with ``reason``, ``source_file``,
    ``source_row``) and ``rows_read`` (ints).

    Args:
      rules: the key, input, partition and schema rules rows are checked against.
      batch_size: rows per output table (the last one cut from an input table may be smaller).
    """

    def __init__(self, rules: ValidationRules, batch_size: int):
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self._rules = rules
        self._batch_size = batch_size

    def expand(self, tables):
        return tables | "ValidateRows" >> beam.ParDo(
            _ValidateAndBatchFn(self._rules, self._batch_size)).with_outputs(REJECTED, ROWS_READ, main="batches")
