"""The floor: the job's irreducible work in a plain loop, no Beam.

    python -m benchmarks.floor --config RUN.yaml --input ROWS=PATTERN [--input ROWS=PATTERN ...] \
        [--repeats R] --result FILE

For each input (the same files the export of that many rows reads) it reads the input the way
the job does and calls the model, nothing else:

- Parquet (``input.format: parquet``): every row group of every file with pyarrow's
  ``read_row_group``, the columns the job reads (``pipeline.plan.preflight``'s read schema);
- DataRecord (``input.format: datarecord``): every file's records in batches of
  ``model.batch_size`` (``iter_file_records``), decoded into a table by ``records_to_table``
  (the job's decoder);

then each table, cut into ``model.batch_size`` rows, into the model's feed arrays
(``transforms.arrow_columns.table_to_feeds``) and through the signature, with the job's
threading: the model on ``concurrent_model_calls(intra_op_threads)`` threads with
``MODEL_CALLS_QUEUED`` batches queued behind them while this thread reads the next
(``transforms.embed``). No validation, partitioning, encoding, writing or Beam: what the export
does beyond this loop is its overhead, so ``pipeline_vs_floor`` is the share of the reachable
speed the job keeps.

The model is loaded and the smallest input run once untimed before timing; every input is timed
``--repeats`` times, the sizes alternating, each run in a ``TimedWindow`` (wall, CPU, other
processes' share).
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import from the repository, not from benchmarks/
    sys.path[0] = str(REPO)

FLOOR_MODEL_THREAD_NAME = "floor-model"  # the floor's model-call threads' name prefix

__all__ = ["floor_tables", "run_floor", "FloorLoop", "measure_floor", "rows_and_pattern", "main"]


def floor_tables(config, pattern: str, columns: List[str]) -> Iterator:
    """The Arrow tables the job's reader would produce from ``pattern``: Parquet row groups of
    ``columns``, or decoded DataRecord batches of ``model.batch_size``."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no input files match {pattern}")
    if config.input.format == "datarecord":
        from pipeline.plan import datarecord_source
        from transforms.inputs.datarecord import _chunks, iter_file_records, open_record_file, records_to_table

        source = datarecord_source(config)
        for path in files:
            with open_record_file(path) as handle:
                for chunk in _chunks(iter_file_records(handle, path, source.container), source.rows_per_table):
                    yield records_to_table(chunk, source, path)[0]
        return
    import pyarrow.parquet as pq

    for path in files:
        parquet = pq.ParquetFile(path)
        for index in range(parquet.num_row_groups):
            yield parquet.read_row_group(index, columns=columns)


def run_floor(tables: Iterator, batch_size: int, feeds_of: Callable, call: Callable, workers: int,
              queued: int) -> int:
    """Feed every table, ``batch_size`` rows at a time, to ``call`` on ``workers`` threads with
    ``workers + queued`` calls in flight at most; returns the rows done."""
    pending: collections.deque = collections.deque()
    rows = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=FLOOR_MODEL_THREAD_NAME) as pool:
        for table in tables:
            for start in range(0, table.num_rows, batch_size):
                part = table.slice(start, batch_size)
                pending.append(pool.submit(call, feeds_of(part)))
                rows += part.num_rows
                while len(pending) > workers + queued:
                    pending.popleft().result()
        while pending:
            pending.popleft().result()
    return rows


class FloorLoop:
    """The floor of one run config, ready to run: the model loaded, the columns the job reads
    resolved. ``run(pattern)`` runs the loop over one input and returns its rows.

    Args:
      config_path: the export's run config (YAML).
    """

    def __init__(self, config_path: str):
        from pipeline.config import load_config
        from pipeline.plan import preflight
        from transforms.arrow_columns import table_to_feeds
        from transforms.embed import MODEL_CALLS_QUEUED, SavedModelHandler

        plan = preflight(load_config(config_path), overwrite=True)
        self.config = config = plan.config
        handler = SavedModelHandler(config.model.path, config.model.signature, plan.inputs, plan.outputs,
                                    config.model.intra_op_threads, config.model.inter_op_threads)
        model = handler.load_model()
        self._feeds_of = lambda table: table_to_feeds(table, handler.inputs)[0]
        self._call = lambda feeds: handler.run_batch(feeds, model)
        self._columns = list(plan.read_schema.names)
        self.settings = {"loops": handler.concurrent_calls, "batch_size": config.model.batch_size,
                         "format": config.input.format, "queued": MODEL_CALLS_QUEUED}

    def run(self, pattern: str) -> int:
        return run_floor(floor_tables(self.config, pattern, self._columns), self.settings["batch_size"],
                         self._feeds_of, self._call, self.settings["loops"], self.settings["queued"])


def measure_floor(config_path: str, inputs: Dict[int, str], repeats: int = 3) -> Dict:
    """Time ``run_floor`` over each input ``repeats`` times; {"runs": {rows: [window, ...]}, ...}."""
    from benchmarks.window import TimedWindow

    floor = FloorLoop(config_path)
    # One untimed pass over the smallest input: the first pass of a fresh process ran 10-30% slower
    # than the next ones (allocator, page cache, the model's table), whichever size came first.
    floor.run(inputs[min(inputs)])
    runs: Dict[int, List[Dict]] = {rows: [] for rows in inputs}
    for _ in range(repeats):
        for rows, pattern in sorted(inputs.items()):
            with TimedWindow() as window:
                done = floor.run(pattern)
            if done != rows:
                raise ValueError(f"{pattern} holds {done} rows, expected {rows}")
            runs[rows].append(window.result())
    return {"runs": {str(rows): found for rows, found in runs.items()}, **floor.settings}


def rows_and_pattern(text: str) -> Tuple[int, str]:
    """``--input ROWS=PATTERN`` as (rows, pattern) (an argparse ``type``)."""
    rows, sep, pattern = text.partition("=")
    if not sep or not rows.isdigit() or not pattern:
        raise argparse.ArgumentTypeError(f"expected ROWS=PATTERN, got {text!r}")
    return int(rows), pattern


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the export's run config (YAML)")
    parser.add_argument("--input", action="append", required=True, metavar="ROWS=PATTERN", type=rows_and_pattern,
                        help="an input of ROWS rows (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--result", required=True, help="write the JSON result here")
    args = parser.parse_args(argv)
    result = measure_floor(args.config, dict(args.input), args.repeats)
    Path(args.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    from benchmarks.floor import main as _main
    sys.exit(_main())
