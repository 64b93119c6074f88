"""The batch element types and their coders (what Beam uses to size and, between processes, move batches)."""
import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.elements import ArrowTableCoder, EmbeddedBatch, EmbeddedBatchCoder, ShardedBatch, ShardedBatchCoder


def _batch(rows, ids=True):
    keys = np.arange(rows, dtype=np.int64) * 7
    outputs = [np.arange(rows * 3, dtype=np.float32).reshape(rows, 3), np.arange(rows, dtype=np.int64)]
    return EmbeddedBatch(keys, outputs, keys % 5 if ids else None)


def _assert_same(a: EmbeddedBatch, b: EmbeddedBatch):
    np.testing.assert_array_equal(a.keys, b.keys)
    assert len(a.outputs) == len(b.outputs)
    for x, y in zip(a.outputs, b.outputs):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    if a.partition_ids is None:
        assert b.partition_ids is None
    else:
        np.testing.assert_array_equal(a.partition_ids, b.partition_ids)


def test_registry_gives_the_batch_coders_to_typed_pcollections():
    assert isinstance(beam.coders.registry.get_coder(pa.Table), ArrowTableCoder)
    assert isinstance(beam.coders.registry.get_coder(EmbeddedBatch), EmbeddedBatchCoder)
    pair = beam.coders.registry.get_coder(beam.typehints.Tuple[int, EmbeddedBatch])
    assert isinstance(pair, beam.coders.TupleCoder) and isinstance(pair.coders()[1], EmbeddedBatchCoder)
    assert isinstance(beam.coders.registry.get_coder(ShardedBatch), ShardedBatchCoder)


def test_arrow_table_coder_round_trips_a_slice_with_a_dictionary_column():
    table = pa.table({"user_id": pa.array([1, 2, None, 4], pa.int64()),
                      "dense": pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], pa.list_(pa.float32())),
                      "src": pa.DictionaryArray.from_arrays(pa.array([0, 0, 1, 1], pa.int32()), pa.array(["a", "b"]))})
    coder = ArrowTableCoder()
    part = table.slice(1, 2)
    back = coder.decode(coder.encode(part))
    assert back.equals(part)
    assert back.schema == part.schema
    # The size estimate comes from the buffers, not from encoding: cheap and about right.
    assert 0 < coder.estimate_size(part) <= coder.estimate_size(table)
    assert coder.estimate_size(table) == table.nbytes


def test_embedded_batch_coder_round_trips_and_estimates_from_the_arrays():
    coder = EmbeddedBatchCoder()
    for batch in (_batch(5), _batch(4, ids=False), _batch(0)):
        _assert_same(batch, coder.decode(coder.encode(batch)))
        assert coder.estimate_size(batch) == batch.nbytes
    assert _batch(5).nbytes == 5 * 8 + 5 * 12 + 5 * 8 + 5 * 8


def test_sharded_batch_coder_round_trips_and_slices_by_shard():
    coder = ShardedBatchCoder()
    sharded = ShardedBatch(_batch(5), [(0, 0, 2), (3, 2, 5)])
    back = coder.decode(coder.encode(sharded))
    _assert_same(back.batch, sharded.batch)
    assert back.ranges == sharded.ranges and len(back) == 5
    assert coder.estimate_size(sharded) == sharded.batch.nbytes
    assert [(shard, rows.keys.tolist()) for shard, rows in back.slices()] == [(0, [0, 7]), (3, [14, 21, 28])]


def test_take_and_concat():
    batch = _batch(6)
    picked = batch.take(np.array([4, 1, 1]))
    np.testing.assert_array_equal(picked.keys, [28, 7, 7])
    np.testing.assert_array_equal(picked.outputs[0], batch.outputs[0][[4, 1, 1]])
    np.testing.assert_array_equal(picked.partition_ids, batch.partition_ids[[4, 1, 1]])
    joined = EmbeddedBatch.concat([batch.take(np.array([0, 1])), batch.take(np.array([2, 3, 4, 5]))])
    _assert_same(joined, batch)
    assert EmbeddedBatch.concat([batch]) is batch
    no_ids = EmbeddedBatch.concat([_batch(2, ids=False), _batch(3, ids=False)])
    assert no_ids.partition_ids is None and len(no_ids) == 5


def test_a_typed_step_gets_the_coder_and_runs():
    from apache_beam.testing.util import assert_that, equal_to

    table = pa.table({"x": [1, 2, 3]})
    with beam.Pipeline("FnApiRunner") as p:
        tables = (p | beam.Create([("f", table)])
                  | beam.MapTuple(lambda name, t: t.slice(1)).with_output_types(pa.Table))
        batches = tables | beam.Map(lambda t: _batch(t.num_rows)).with_output_types(EmbeddedBatch)
        assert_that(batches | beam.Map(lambda b: b.keys.tolist()), equal_to([[0, 7]]))
        proto = p.to_runner_api()
    coders = {name: proto.components.pcollections[pc].coder_id
              for name, pc in ((t.unique_name, next(iter(t.outputs.values())))
                               for t in proto.components.transforms.values() if len(t.outputs) == 1)}
    assert any("ArrowTableCoder" in c for c in coders.values())
    assert any("EmbeddedBatchCoder" in c for c in coders.values())
