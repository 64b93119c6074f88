"""Run the TF SavedModel on each batch: one signature call per batch, one model per process.

The calls run on a small thread pool of the DoFn (TF releases the GIL), so the model computes
while the bundle's own thread reads, validates, encodes and writes the batches around it; the
DoFn emits each batch's results a few batches later, in input order (``MODEL_CALLS_QUEUED``,
``SavedModelHandler.concurrent_calls``), and the last ones from ``finish_bundle``.

``SavedModelHandler`` is a Beam ``ModelHandler``: ``RunInference(SavedModelHandler(...))`` runs
the signature on Arrow tables (each one a batch of rows, columns turned into the signature's
keyword feeds by the ``InputSpec``s) or on dicts of numpy values (one example each, stacked
into the keyword feeds), which Beam's TF handler cannot (it needs tensorflow-hub and Keras
loading and stacks a single input). The export's own step (``EmbedBatches``) calls the same
handler's ``run_batch`` on whole batches. Either way the model is loaded with
``tf.saved_model.load`` through ``apache_beam.utils.shared.Shared``, so a process holds one copy
whatever the number of DoFn instances (a model on a scheme TensorFlow cannot open, such as
hdfs://, is first copied to a local directory through Beam's FileSystems:
``transforms.model_files``). Metrics use RunInference's names so dashboards built for
RunInference read this job too. Rows whose outputs are not finite are rejected, not written.
"""
from __future__ import annotations

import collections
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from transforms.arrow_columns import as_array, table_to_feeds, to_numpy
from transforms.elements import EmbeddedBatch
from transforms.errors import ExportError
from transforms.isolate import ModelFailureIsolation
from transforms.keys import key_arrays
from transforms.model_files import local_model_dir
from transforms.specs import InputSpec, OutputSpec
from transforms.tf_runtime import import_tensorflow, set_thread_pools
from transforms.rejected import REJECTED, rejected_from_tagged
from transforms.validate import METRICS_NAMESPACE

__all__ = ["LoadedModel", "SavedModelHandler", "InferenceMetrics", "EmbedBatches", "NON_FINITE_EMBEDDING",
           "concurrent_model_calls"]

NON_FINITE_EMBEDDING = "non_finite_embedding"
# Batches queued for the model beyond those it is working on, while the bundle's thread
# prepares the next one: enough to keep the model busy through reading the next row group.
MODEL_CALLS_QUEUED = 2
MODEL_THREAD_NAME = "embed-model"  # the model-call threads' name prefix (benchmarks.cpu_accounting counts them)


class LoadedModel:
    """A loaded SavedModel and its signature function (a plain class, so Shared can weak-reference it).

    Args:
      module: what ``tf.saved_model.load`` returned (kept alive: the function uses its variables).
      function: the signature's concrete function.
      load_millis: how long loading took.
      num_bytes: bytes of the variables the function uses.
    """

    def __init__(self, module, function, load_millis: int, num_bytes: int):
        self.module = module
        self.function = function
        self.load_millis = load_millis
        self.num_bytes = num_bytes


Example = Union[pa.Table, Mapping[str, np.ndarray]]


class SavedModelHandler(ModelHandler[Example, PredictionResult, LoadedModel]):
    """Loads a SavedModel signature and runs it on batches: a ``ModelHandler`` for ``RunInference``.

    An example is an Arrow table (a batch of rows holding the ``inputs``' columns; its
    ``PredictionResult.inference`` is {output name: array with one row per table row}) or a
    mapping {input name: numpy value of one row} (its inference is {output name: that row's
    value}). Rows must already be valid model input (``ValidateAndBatch`` checks them in the
    export).

    Args:
      model_path: the SavedModel directory (local, gs://, ...: whatever TF's file system reads).
      signature: the signature to call.
      inputs: the signature inputs and the columns that feed them.
      outputs: the signature outputs exported, in config order (the first is the embedding).
      intra_op_threads / inter_op_threads: TF thread pools of a worker process (0 = TF's
        default, all cores). Only effective before TF has run anything in the process.
        ``intra_op_threads`` also sets how many batches the model works on at once
        (``concurrent_calls``): with 0 one call at a time, each op spread over all cores;
        with n > 0, cores // n calls at once, each op on n threads. On a small machine 1 is
        fastest: an op spread over all cores waits for its slowest share whenever the
        bundle's own thread (reading, writing) holds one of those cores, while single-threaded
        calls side by side just take turns.
      namespace: the metrics namespace.
      batching: ``ModelHandler``'s arguments for ``RunInference`` (``min_batch_size``,
        ``max_batch_size``, ...; an Arrow table counts as one element). By default RunInference
        keeps one model per process (``Shared``), as the export's own step does.
    """

    def __init__(self, model_path: str, signature: str, inputs: Sequence[InputSpec],
                 outputs: Sequence[OutputSpec], intra_op_threads: int = 0, inter_op_threads: int = 0,
                 namespace: str = METRICS_NAMESPACE, **batching: Any):
        super().__init__(**batching)
        self.model_path = model_path
        self.signature = signature
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self._namespace = namespace

    @property
    def model_tag(self) -> str:
        return f"{self.model_path}#{self.signature}"

    @property
    def concurrent_calls(self) -> int:
        """Model calls a DoFn instance runs at once (see ``intra_op_threads``)."""
        return concurrent_model_calls(self.intra_op_threads)

    def get_metrics_namespace(self) -> str:
        return self._namespace

    def load_model(self) -> LoadedModel:
        tf = import_tensorflow()  # only workers that run the model pay for importing TF
        set_thread_pools(tf, self.intra_op_threads, self.inter_op_threads)
        start = time.perf_counter()
        try:
            module = tf.saved_model.load(local_model_dir(self.model_path))
        except Exception as err:
            raise RuntimeError(f"cannot load the SavedModel {self.model_path}: {err}") from err
        try:
            function = module.signatures[self.signature]
        except KeyError:
            raise ValueError(f"SavedModel {self.model_path} has no signature {self.signature!r}; "
                             f"it has {sorted(module.signatures.keys())}") from None
        num_bytes = sum(int(v.shape.num_elements() or 0) * v.dtype.size for v in function.variables)
        return LoadedModel(module, function, int((time.perf_counter() - start) * 1000), num_bytes)

    def run_batch(self, feeds: Mapping[str, np.ndarray], model: LoadedModel) -> Dict[str, np.ndarray]:
        """One signature call, keyword feeds {input name: [B, ...] array} -> {output name: array}."""
        tf = import_tensorflow()
        result = model.function(**{name: tf.convert_to_tensor(array) for name, array in feeds.items()})
        return {spec.name: result[spec.name].numpy() for spec in self.outputs}

    def run_inference(self, batch: Sequence[Example], model: LoadedModel,
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[PredictionResult]:
        """One signature call for the whole batch of examples (Arrow tables, or one-row mappings)."""
        if not batch:
            return []
        if isinstance(batch[0], pa.Table):
            feeds, _ = table_to_feeds(pa.concat_tables(batch), self.inputs)
            outputs = self.run_batch(feeds, model)
            results, start = [], 0
            for table in batch:
                stop = start + table.num_rows
                results.append(PredictionResult(table, {name: array[start:stop] for name, array in outputs.items()},
                                                self.model_tag))
                start = stop
            return results
        feeds = {spec.name: np.stack([np.asarray(example[spec.name], dtype=spec.np_dtype) for example in batch])
                 for spec in self.inputs}
        outputs = self.run_batch(feeds, model)
        return [PredictionResult(example, {name: array[i] for name, array in outputs.items()}, self.model_tag)
                for i, example in enumerate(batch)]

    def get_num_bytes(self, batch: Union[Sequence[Example], Mapping[str, np.ndarray]]) -> int:
        """Bytes of a batch: of its examples (tables, mappings of arrays) or of its keyword feeds."""
        if isinstance(batch, Mapping):
            return _feed_bytes(batch)
        return int(sum(example.nbytes if isinstance(example, pa.Table) else _feed_bytes(example)
                       for example in batch))


def _feed_bytes(feeds: Mapping[str, Any]) -> int:
    return int(sum(np.asarray(value).nbytes for value in feeds.values()))


def concurrent_model_calls(intra_op_threads: int) -> int:
    """Model calls to run at once for TF intra-op pools of ``intra_op_threads`` (0 = TF default):
    1 when each op already spreads over all cores, else one call per ``intra_op_threads`` cores."""
    if intra_op_threads <= 0:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // intra_op_threads)


class InferenceMetrics:
    """RunInference's metrics (names as ``apache_beam.ml.inference.base._MetricsCollector``).

    Args:
      namespace: the metrics namespace.
    """

    def __init__(self, namespace: str):
        self.num_inferences = Metrics.counter(namespace, "num_inferences")
        self.failed_batches_counter = Metrics.counter(namespace, "failed_batches_counter")
        self.inference_request_batch_size = Metrics.distribution(namespace, "inference_request_batch_size")
        self.inference_request_batch_byte_size = Metrics.distribution(
            namespace, "inference_request_batch_byte_size")
        self.inference_batch_latency_micro_secs = Metrics.distribution(
            namespace, "inference_batch_latency_micro_secs")
        self.model_byte_size = Metrics.distribution(namespace, "model_byte_size")
        self.load_model_latency_milli_secs = Metrics.distribution(namespace, "load_model_latency_milli_secs")
        self._pending_load: Optional[Tuple[int, int]] = None

    def cache_load_model_metrics(self, load_millis: int, num_bytes: int) -> None:
        """Remember load metrics from setup(), where metrics cannot be reported yet."""
        self._pending_load = (load_millis, num_bytes)

    def flush_load_model_metrics(self) -> None:
        if self._pending_load is not None:
            load_millis, num_bytes = self._pending_load
            self.load_model_latency_milli_secs.update(load_millis)
            self.model_byte_size.update(num_bytes)
            self._pending_load = None

    def update(self, examples: int, byte_size: int, latency_micros: int) -> None:
        self.num_inferences.inc(examples)
        self.inference_request_batch_size.update(examples)
        self.inference_request_batch_byte_size.update(byte_size)
        self.inference_batch_latency_micro_secs.update(latency_micros)


def _timed_call(run, feeds: Dict[str, np.ndarray], model: LoadedModel) -> Tuple[Dict[str, np.ndarray], int]:
    """``run(feeds, model)`` and its latency in microseconds (metrics are reported by the caller:
    Beam's metrics belong to the thread running the bundle, not to this one)."""
    start = time.perf_counter()
    outputs = run(feeds, model)
    return outputs, int((time.perf_counter() - start) * 1_000_000)


def finite_rows(array: np.ndarray) -> np.ndarray:
    """bool [B]: rows of a float output whose values are all finite (non-float outputs: all True)."""
    if array.dtype.kind != "f":
        return np.ones(len(array), dtype=bool)
    finite = np.isfinite(array)
    # All finite, the usual case: one flat reduction costs half of a reduction per row.
    return np.ones(len(array), dtype=bool) if finite.all() else finite.all(axis=tuple(range(1, array.ndim)))


def check_output_shape(spec: OutputSpec, array: np.ndarray, rows: int, first_key: object) -> None:
    """Fail the run when a batch's output does not have the shape the plan (and the manifest)
    states: ``rows`` rows, and every per-row dim the plan fixes. A model whose output width
    changes at run time would otherwise write records that disagree with the manifest.

    Raises:
      ExportError: naming the output, both shapes and the batch's first key.
    """
    planned = tuple(spec.shape)
    got = tuple(array.shape[1:])
    fits = (array.shape[:1] == (rows,) and len(got) == len(planned)
            and all(want is None or want == have for want, have in zip(planned, got)))
    if not fits:
        def show(dims):
            return "[B" + "".join(f", {'?' if d is None else d}" for d in dims) + "]"
        raise ExportError(f"model output {spec.name!r} gave shape {show(got)} ({array.shape[0]} rows) for the "
                          f"batch of {rows} rows with first key {first_key}; the plan and the manifest say {show(planned)}: "
                          "the model's output shape changed at run time; nothing was published")


@beam.typehints.with_input_types(pa.Table)
@beam.typehints.with_output_types(EmbeddedBatch, **{REJECTED: pa.Table})
class _EmbedFn(beam.DoFn):
    def __init__(self, handler: SavedModelHandler, key_column: str, partition_column: Optional[str],
                 max_failed_rows: Optional[int] = None):
        self._handler = handler
        self._key_column = key_column
        self._partition_column = partition_column
        self._isolation = ModelFailureIsolation(max_failed_rows, f"model {handler.model_path} "
                                                                 f"(signature {handler.signature!r})")
        self._shared_model = shared.Shared()
        self._metrics = InferenceMetrics(handler.get_metrics_namespace())
        namespace = handler.get_metrics_namespace()
        self._rows_rejected = Metrics.counter(namespace, "rows_rejected")
        self._truncated = {spec.name: Metrics.counter(namespace, f"ids_truncated.{spec.name}")
                           for spec in handler.inputs}
        self._model: Optional[LoadedModel] = None
        self._calls: Optional[ThreadPoolExecutor] = None
        self._ahead = 1
        self._pending: collections.deque = collections.deque()

    def setup(self):
        self._model = self._shared_model.acquire(self._handler.load_model, tag=self._handler.model_tag)
        self._metrics.cache_load_model_metrics(self._model.load_millis, self._model.num_bytes)
        workers = self._handler.concurrent_calls
        self._calls = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=MODEL_THREAD_NAME)
        self._ahead = workers + MODEL_CALLS_QUEUED

    def start_bundle(self):
        self._pending = collections.deque()

    def finish_bundle(self):
        while self._pending:
            for out in self._complete(self._pending.popleft()):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
                else:
                    yield GlobalWindows.windowed_value(out)
        self._metrics.flush_load_model_metrics()

    def teardown(self):
        if self._calls is not None:
            self._calls.shutdown(wait=True, cancel_futures=True)
            self._calls = None

    def process(self, table: pa.Table) -> Iterable[EmbeddedBatch]:
        if table.num_rows == 0:
            return
        feeds, truncated = table_to_feeds(table, self._handler.inputs)
        for name, count in truncated.items():
            if count:
                self._truncated[name].inc(count)
        # The model runs on background threads (TF releases the GIL) while this one goes on
        # reading, validating and writing; a batch's outputs are emitted a few batches later,
        # in input order, and the last ones in finish_bundle.
        call = self._calls.submit(_timed_call, self._handler.run_batch, feeds, self._model)
        self._pending.append((table, feeds, call))
        while len(self._pending) > self._ahead:
            yield from self._complete(self._pending.popleft())

    def _complete(self, pending) -> Iterable[EmbeddedBatch]:
        """The outputs of one submitted batch, once its model call is done (same thread as process)."""
        table, feeds, call = pending
        rows = table.num_rows
        try:
            outputs, micros = call.result()
        except Exception as err:
            # Bisect the batch (transforms.isolate): only the rows the model fails on alone are rejected.
            start = time.perf_counter()
            self._metrics.failed_batches_counter.inc()
            outputs, feeds, table, failed = self._isolation.split(
                lambda part: self._handler.run_batch(part, self._model), feeds, table, err)
            if failed is not None:
                self._rows_rejected.inc(failed.num_rows)
                yield beam.pvalue.TaggedOutput(REJECTED, failed)
            rows = table.num_rows
            if rows == 0:
                return
            micros = int((time.perf_counter() - start) * 1_000_000)
        self._metrics.update(rows, _feed_bytes(feeds), micros)
        arrays = [outputs[spec.name] for spec in self._handler.outputs]
        for spec, array in zip(self._handler.outputs, arrays):
            check_output_shape(spec, array, rows, table.column(self._key_column)[0].as_py())
        keys, key_strings = key_arrays(table.column(self._key_column))
        partition_ids = None
        if self._partition_column is not None:
            partition_ids = to_numpy(as_array(table.column(self._partition_column))).astype(np.int64)
        good = np.ones(rows, dtype=bool)
        for i, (spec, array) in enumerate(zip(self._handler.outputs, arrays)):
            bad = ~finite_rows(array) & good
            if bad.any():
                reason = NON_FINITE_EMBEDDING if i == 0 else f"non_finite_output:{spec.name}"
                count = int(bad.sum())
                self._rows_rejected.inc(count)
                Metrics.counter(self._handler.get_metrics_namespace(), f"rows_rejected.{reason}").inc(count)
                yield beam.pvalue.TaggedOutput(REJECTED, rejected_from_tagged(table, bad, reason))
                good &= ~bad
        batch = EmbeddedBatch(keys, arrays, partition_ids, key_strings)
        if not good.all():
            batch = batch.take(np.flatnonzero(good))
        if len(batch):
            yield batch


class EmbedBatches(beam.PTransform):
    """Arrow tables of valid rows -> EmbeddedBatch; tagged output ``rejected`` for rows whose
    model outputs are not finite.

    Args:
      handler: loads and runs the model.
      key_column: the user-key column (integer, or string: ``transforms.keys.key_arrays``).
      partition_column: the partition-id column carried to the partition step, or None.
      max_failed_rows: rows the model may fail on (after bisection) before the job stops early,
        certain to exceed output.max_reject_fraction; None for no limit.
    """

    def __init__(self, handler: SavedModelHandler, key_column: str, partition_column: Optional[str] = None,
                 max_failed_rows: Optional[int] = None):
        super().__init__()
        self._handler = handler
        self._key_column = key_column
        self._partition_column = partition_column
        self._max_failed_rows = max_failed_rows

    def expand(self, tables):
        return tables | "RunModel" >> beam.ParDo(
            _EmbedFn(self._handler, self._key_column, self._partition_column, self._max_failed_rows)).with_outputs(
                REJECTED, main="embedded")
