"""Duplicate keys, counted both ways: CountDuplicateKeys gives the same counts whatever the number
of key buckets (one bucket takes a shortcut: no hashing, no split); key logs count a shard's
duplicates from its parts."""
from typing import Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.duplicates import (KEY_LOG_SUFFIX, NO_DUPLICATES, CountDuplicateKeys, KeyLog, count_logged_keys,
                                  duplicate_counts, sum_duplicate_counts)
from transforms.elements import EmbeddedBatch


def _batches():
    rng = np.random.default_rng(5)
    keys = np.concatenate([np.arange(1000, 1300), [1000, 1000, 1001, 1299, -7, -7]]).astype(np.int64)
    keys = rng.permutation(keys)
    return [EmbeddedBatch(part, [np.zeros((len(part), 2), np.float32)]) for part in np.array_split(keys, 4)]


@pytest.mark.parametrize("buckets", [1, 3])
def test_duplicate_keys_counted_across_batches_and_buckets(buckets):
    batches = _batches()
    # 1000 (3x), 1001 (2x), 1299 (2x), -7 (2x): 4 keys, 5 rows beyond their first.
    assert duplicate_counts(np.concatenate([b.keys for b in batches])) == (4, 5, ())
    with BeamTestPipeline(runner="FnApiRunner") as p:
        per_bucket = p | beam.Create(batches, reshuffle=False) | CountDuplicateKeys(buckets)
        counts = (per_bucket | "Counts" >> beam.Map(lambda c: c[:2]).with_output_types(Tuple[int, int])
                  | beam.CombineGlobally(lambda pairs: tuple(map(sum, zip(*pairs))) if pairs else (0, 0)))
        assert_that(counts, equal_to([(4, 5)]))
        collisions = per_bucket | "Collisions" >> beam.FlatMap(lambda c: c[2])  # integer keys: none
        assert_that(collisions, equal_to([]), label="NoCollisions")


def test_key_logs_count_a_shards_duplicates_across_its_parts(tmp_path, monkeypatch):
    """Per-shard counting (hash placement): the keys of each part go to a key log, written in
    pieces; the shard's count over its parts' logs equals the count over all its keys."""
    import transforms.duplicates
    monkeypatch.setattr(transforms.duplicates, "KEY_LOG_ROWS", 50)  # several pieces a log
    batches = _batches()
    paths = []
    for i, group in enumerate((batches[:2], batches[2:])):  # two parts of one shard
        log = KeyLog(str(tmp_path / f"part{i}.part{KEY_LOG_SUFFIX}"))
        for batch in group:
            log.add(batch)
        paths.append(log.close())
    with pa.ipc.open_stream(open(paths[0], "rb").read()) as reader:
        assert len(list(reader)) == 2  # written when 50 keys were held, then at close
    assert count_logged_keys(paths) == (4, 5, ())
    assert KeyLog(str(tmp_path / "empty.keys")).close() is None  # a part with no rows logs nothing
    assert count_logged_keys([]) == NO_DUPLICATES


def test_key_logs_of_string_keys_keep_collisions_apart(tmp_path):
    """String keys are logged with their ids: a repeated string is a duplicate, two strings
    sharing an id are a collision, as in the bucket count."""
    ids = np.array([5, 5, 5, 9, 9], dtype=np.int64)
    strings = np.array([b"a", b"a", b"b", b"c", b"c"], dtype=object)
    log = KeyLog(str(tmp_path / "p.keys"))
    log.add(EmbeddedBatch(ids[:2], [np.zeros((2, 1), np.float32)], key_strings=strings[:2]))
    log.add(EmbeddedBatch(ids[2:], [np.zeros((3, 1), np.float32)], key_strings=strings[2:]))
    counted = count_logged_keys([log.close()])
    assert counted == duplicate_counts(ids, strings) == (2, 2, ((5, ("a", "b")),))


def test_summed_counts_of_disjoint_shards():
    assert sum_duplicate_counts([(1, 2, ((9, ("x", "y")),)), NO_DUPLICATES, (3, 4, ((2, ("p", "q")),))]) == \
        (4, 6, ((2, ("p", "q")), (9, ("x", "y"))))
