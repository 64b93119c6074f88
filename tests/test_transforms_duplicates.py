"""CountDuplicateKeys: the same counts whatever the number of key buckets (one bucket takes a
shortcut: no hashing, no split)."""
from typing import Tuple

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.duplicates import CountDuplicateKeys, duplicate_counts
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
