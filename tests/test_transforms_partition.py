"""Shard placement (docs/FORMAT.md section 6) and the Partition-layer split, checked against independent references."""
import numpy as np
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline_fixtures import fmix64_reference
from transforms.elements import EmbeddedBatch, ShardedBatch
from transforms.partition import PartitionBatches, fmix64, shard_of_keys, shard_ranges, split_by_shard
from transforms.specs import PartitionSpec

FN_API = "FnApiRunner"  # TestPipeline ignores --runner in argv


def test_fmix64_matches_python_reference_including_edge_values():
    keys = np.array([0, 1, 2, -1, -2, 2**63 - 1, -2**63, 123456789, -987654321], dtype=np.int64)
    got = fmix64(keys.view(np.uint64))
    assert [int(v) for v in got] == [fmix64_reference(int(k)) for k in keys]
    assert int(got[0]) == 0  # fmix64(0) == 0, a known property of the finalizer


def test_shard_of_keys_is_fmix64_mod_n_on_the_uint64_view():
    rng = np.random.default_rng(1)
    keys = rng.integers(-2**63, 2**63 - 1, size=2000, dtype=np.int64)
    for n in (1, 3, 16, 1000):
        shards = shard_of_keys(keys, n)
        assert shards.dtype == np.int64
        assert [int(s) for s in shards] == [fmix64_reference(int(k)) % n for k in keys]
    # Spread: 16 shards over 2000 random keys all get users.
    assert np.bincount(shard_of_keys(keys, 16), minlength=16).min() > 60


def test_shard_of_keys_rejects_bad_arguments():
    import pytest
    with pytest.raises(ValueError, match="num_shards must be > 0"):
        shard_of_keys(np.array([1]), 0)
    with pytest.raises(TypeError, match="keys must be integers"):
        shard_of_keys(np.array([1.5]), 4)


def test_split_by_shard_keeps_order_like_tf_dynamic_partition():
    import tensorflow as tf
    rng = np.random.default_rng(2)
    shards = rng.integers(0, 5, size=300)
    shards[shards == 3] = 4  # shard 3 absent: no empty slice comes back for it
    split = split_by_shard(shards)
    parts = tf.dynamic_partition(tf.range(300), tf.constant(shards, tf.int32), 5)
    expected = {s: parts[s].numpy() for s in range(5) if len(parts[s].numpy())}
    assert [s for s, _ in split] == sorted(expected)
    for shard, rows in split:
        assert isinstance(shard, int)  # becomes a GroupByKey key: never a numpy int
        np.testing.assert_array_equal(rows, expected[shard])


def test_shard_ranges_order_the_rows_by_shard_for_any_shard_count():
    rng = np.random.default_rng(3)
    for num_shards in (1, 16, 40_000):  # past 32,767 shards the ids are sorted as int64
        shards = rng.integers(0, num_shards, size=5000)
        order, ranges = shard_ranges(shards)
        assert [s for s, _, _ in ranges] == sorted(set(shards.tolist()))
        assert ranges[0][1] == 0 and ranges[-1][2] == 5000
        for shard, start, end in ranges:
            np.testing.assert_array_equal(order[start:end], np.flatnonzero(shards == shard))
    order, ranges = shard_ranges(np.zeros(0, np.int64))
    assert len(order) == 0 and ranges == []


def test_batch_rows_are_views():
    batch = _batch(range(10), range(10))
    part = batch.rows(2, 5)
    assert part.keys.tolist() == [2, 3, 4] and part.partition_ids.tolist() == [2, 3, 4]
    assert np.shares_memory(part.embedding, batch.embedding) and part.embedding.flags.c_contiguous


def _batch(keys, pids=None):
    keys = np.asarray(keys, np.int64)
    emb = np.stack([keys.astype(np.float32), -keys.astype(np.float32)], axis=1)
    return EmbeddedBatch(keys, [emb], None if pids is None else np.asarray(pids, np.int64))


def _shard_rows(sharded):
    """(shard, key, embedding[0]) for every user of a ShardedBatch, checking its layout."""
    assert isinstance(sharded, ShardedBatch) and len(sharded) == sum(end - start for _, start, end in sharded.ranges)
    assert [start for _, start, _ in sharded.ranges] == [0] + [end for _, _, end in sharded.ranges[:-1]]
    return [(shard, int(k), float(e)) for shard, rows in sharded.slices()
            for k, e in zip(rows.keys, rows.embedding[:, 0])]


def test_partition_batches_by_hash_in_a_pipeline():
    keys = list(range(-50, 50))
    with BeamTestPipeline(runner=FN_API) as p:
        out = (p | beam.Create([_batch(keys[:60]), _batch(keys[60:])])
               | PartitionBatches(PartitionSpec(4))
               | beam.FlatMap(_shard_rows))
        assert_that(out, equal_to([(fmix64_reference(k) % 4, k, float(k)) for k in keys]))


def test_partition_batches_by_column_in_a_pipeline():
    keys = list(range(20))
    pids = [k % 3 for k in keys]
    with BeamTestPipeline(runner=FN_API) as p:
        out = (p | beam.Create([_batch(keys, pids)])
               | PartitionBatches(PartitionSpec(3, column="pid"))
               | beam.FlatMap(lambda sharded: [(type(s).__name__, s, rows.keys.tolist())
                                               for s, rows in sharded.slices()]))
        # Each shard's users keep their batch order (tf.dynamic_partition's).
        assert_that(out, equal_to([("int", s, [k for k in keys if k % 3 == s]) for s in range(3)]))
