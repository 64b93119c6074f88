"""A model whose output shape changes at run time fails the run, naming the batch; nothing is published.

The plan fixes each output's per-row shape before launch (from the signature, or, when the
signature leaves the embedding width open, from a 1-row probe), and the manifest states it. The
model here has signature ``[None, None]`` and gives 64 values per row for a 1-row batch (the
probe) and 32 for any other: every batch's outputs are checked against the plan.
"""
import os

import numpy as np
import pytest

from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline_fixtures import DENSE_DIM, IDS_LEN, cache_dir, tiny_config, write_users
from rel_support import final_looking, tree
from transforms.errors import ExportError

pytestmark = pytest.mark.timeout(180)


def shifting_model() -> str:
    """A real SavedModel: embedding float32 [None, None], 64 wide for one row, 32 otherwise."""
    path = os.path.join(cache_dir(), "shifting-model")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    import tensorflow as tf

    class Shifting(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(3)
            self.w = tf.Variable(rng.normal(size=(DENSE_DIM, 64)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, DENSE_DIM], tf.float32),
                                      tf.TensorSpec([None, IDS_LEN], tf.int64)])
        def serve(self, dense, sparse_ids):
            x = tf.matmul(dense, self.w) + tf.cast(tf.reduce_sum(sparse_ids, 1, keepdims=True), tf.float32)
            width = tf.where(tf.shape(dense)[0] == 1, 64, 32)
            return {"embedding": x[:, :width]}

    module = Shifting()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def test_an_output_width_that_differs_from_the_plan_fails_the_run_naming_the_batch(tmp_path):
    write_users(str(tmp_path / "in"), 600, files=2)
    out = tmp_path / "out"
    cfg = tiny_config(str(tmp_path / "in" / "*.parquet"), shifting_model(), str(out), num_shards=3,
                      extra_output=False)
    with pytest.raises(ExportError) as err:
        run_export(preflight(cfg))
    message = str(err.value)
    assert "model output 'embedding'" in message and "[B, 32]" in message and "[B, 64]" in message, message
    assert "first key" in message, message
    assert not (out / "_SUCCESS").exists() and final_looking(str(out)) == []
    assert [name for name in tree(str(out)) if not name.startswith("_temporary/")] == []
