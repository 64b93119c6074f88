"""``input.format: datarecord``: the run config's feature mapping resolved, and the files checked.

The launcher turns ``input.features`` into a ``transforms.read_datarecord.DataRecordSource``
(feature names hashed to ids, the column types that follow from them) and checks it against the
model inputs exactly as Parquet footers are checked. TFRecord and block files carry no record
count, so the input's row count is unknown before the run (``InputFile.rows`` is None and the
finalize step checks rows_read == rows_written + rows_rejected only); counting would mean reading
every file twice. Instead, the first record of every file is read and decoded, which catches a
wrong ``input.container``, a compressed or foreign file, or a file of something else.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import pyarrow as pa

from pipeline.config import ExportConfig
from transforms.read_datarecord import (CONTINUOUS, DISCRETE, DataRecordSource, FeatureColumn, iter_file_records,
                                        open_record_file)
from transforms.specs import InputSpec
from twml.decode import decode_data_record
from twml.feature_ids import feature_id

__all__ = ["datarecord_source", "scan_datarecord_inputs", "probe_file"]

_LOG = logging.getLogger(__name__)
_PROBE_THREADS = 16


def _used_columns(config: ExportConfig) -> list:
    used = [spec.column for spec in config.model.inputs.values()]
    if config.partition.column:
        used.append(config.partition.column)
    return used


def datarecord_source(config: ExportConfig) -> DataRecordSource:
    """The feature columns that the model inputs and partition column use (others are not decoded)."""
    inp = config.input
    features = inp.features or {}
    used = set(_used_columns(config))
    unused = [name for name in features if name not in used]
    if unused:
        _LOG.warning("input.features %s feed no model input or partition column; they are not read", unused)
    columns = []
    for name, column in features.items():
        if name not in used:
            continue
        default = column.default
        if default is not None and column.kind == CONTINUOUS:
            default = float(default)
        columns.append(FeatureColumn(name=name, kind=column.kind,
                                     feature_ids=tuple(feature_id(n) for n in column.names),
                                     scalar=isinstance(getattr(column, column.kind), str)
                                     and column.kind in (CONTINUOUS, DISCRETE),
                                     default=default))
    return DataRecordSource(container=inp.container or "tfrecord", key_column=inp.key,
                            key_feature_id=feature_id(inp.key), columns=tuple(columns),
                            rows_per_table=config.model.batch_size, string_key=inp.key_type == "string")


def probe_file(path: str, container: str) -> Optional[str]:
    """None if the file's first record (if any) is framed and decodes as a DataRecord; else why not."""
    try:
        with open_record_file(path) as handle:
            for record in iter_file_records(handle, path, container):
                decode_data_record(record, path)
                break
    except Exception as err:  # report the file, never a bare library error
        return f"{type(err).__name__}: {err}"
    return None


def scan_datarecord_inputs(config: ExportConfig, inputs: Sequence[InputSpec]):
    """(files, skipped files, read schema) of a DataRecord input; rows per file are unknown (None).

    Raises PreflightError naming the key, file or column that does not fit.
    """
    from pipeline.preflight import (InputFile, PreflightError, _check_schema,  # preflight imports this module
                                    match_input_files)

    source = datarecord_source(config)
    features = sorted(config.input.features or {})
    for name, spec in config.model.inputs.items():
        if spec.column not in features:
            raise PreflightError(f"model.inputs.{name}.column {spec.column!r} is not one of input.features "
                                 f"{features}")
    if config.partition.column and config.partition.column not in features:
        raise PreflightError(f"partition.column {config.partition.column!r} is not one of input.features {features}")
    schema: pa.Schema = source.schema
    _check_schema("input.features", schema, config, inputs)

    pattern = config.input.path
    paths = match_input_files(pattern)
    container = source.container
    with ThreadPoolExecutor(max_workers=min(_PROBE_THREADS, len(paths))) as pool:
        problems = list(pool.map(lambda item: probe_file(item[0], container), paths))
    files, skipped = [], []
    for (path, size), problem in zip(paths, problems):
        if problem is None:
            files.append(InputFile(path, None, 0, size))
        elif config.input.on_bad_file == "skip":
            skipped.append((path, problem))
        else:
            raise PreflightError(f"{path}: not a readable {container} file of DataRecords ({problem}); check "
                                 "input.container, or set input.on_bad_file: skip to export the other files")
    if not files:
        raise PreflightError(f"input.path {pattern}: no readable {container} files (skipped: {skipped})")
    return tuple(files), tuple(skipped), schema
