"""The seeded embedding-model builder: signature contract, architecture, determinism, reuse."""
import json

import numpy as np
import pytest
import tensorflow as tf

from pipeline.demo.models import (PARAMS_FILE, build_embedding_model, demo_model_kwargs,
                                  ensure_embedding_model, reference_model_kwargs, saved_model_params)

SMALL = dict(dense_dim=6, sparse_length=5, vocab=50, embed_dim=4, hidden=(12, 8), output_dim=7)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("models") / "small")
    build_embedding_model(path, **SMALL, seed=3)
    return path, tf.saved_model.load(path)


def _call(loaded, dense, sparse):
    out = loaded.signatures["serving_default"](dense=tf.constant(dense, tf.float32),
                                               sparse_ids=tf.constant(sparse, tf.int64))
    assert set(out) == {"embedding"}
    return out["embedding"].numpy()


def _numpy_forward(loaded, dense, sparse):
    """The documented architecture, recomputed in numpy from the saved variables."""
    table = loaded.id_table.numpy()
    present = (sparse != 0)
    pooled = np.zeros((len(dense), table.shape[1]), np.float64)
    for i in range(len(dense)):
        ids = sparse[i][present[i]]
        if len(ids):
            pooled[i] = table[np.mod(ids, table.shape[0])].mean(axis=0)
    x = np.concatenate([dense, pooled], axis=1)
    kernels = [k.numpy() for k in loaded.kernels]
    biases = [b.numpy() for b in loaded.biases]
    for i, (k, b) in enumerate(zip(kernels, biases)):
        x = x @ k + b
        if i < len(kernels) - 1:
            x = np.maximum(x, 0)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_signature_contract(small_model):
    path, loaded = small_model
    fn = loaded.signatures["serving_default"]
    _, inputs = fn.structured_input_signature
    assert inputs["dense"].dtype == tf.float32 and inputs["dense"].shape.as_list() == [None, 6]
    assert inputs["sparse_ids"].dtype == tf.int64 and inputs["sparse_ids"].shape.as_list() == [None, 5]
    out = fn.structured_outputs["embedding"]
    assert out.dtype == tf.float32 and out.shape.as_list() == [None, 7]
    assert loaded.id_table.shape.as_list() == [50, 4]
    assert [k.shape.as_list() for k in loaded.kernels] == [[10, 12], [12, 8], [8, 7]]
    assert saved_model_params(path) == {**SMALL, "hidden": [12, 8], "seed": 3}


def test_outputs_match_the_documented_architecture(small_model):
    _, loaded = small_model
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((9, 6)).astype(np.float32)
    sparse = rng.integers(-10**12, 10**12, size=(9, 5))
    sparse[0] = 0                      # no ids at all: pooled part is zero, no NaN
    sparse[1, 2:] = 0                  # padding masked out
    sparse[2, 0] = -7                  # negative ids map with a floor modulo
    got = _call(loaded, dense, sparse)
    assert got.dtype == np.float32 and got.shape == (9, 7)
    np.testing.assert_allclose(got, _numpy_forward(loaded, dense, sparse), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_pad_ids_and_order_do_not_matter_but_ids_do(small_model):
    _, loaded = small_model
    dense = np.ones((4, 6), np.float32)
    sparse = np.array([[3, 11, 0, 0, 0],
                       [0, 11, 0, 3, 0],        # same ids, other slots: same mean
                       [3 + 50, 11 - 100, 0, 0, 0],   # ids congruent mod vocab: same rows
                       [3, 12, 0, 0, 0]])
    got = _call(loaded, dense, sparse)
    np.testing.assert_allclose(got[1], got[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[2], got[0], rtol=1e-6, atol=1e-6)
    assert np.abs(got[3] - got[0]).max() > 1e-4


def test_builds_are_deterministic_per_seed(tmp_path, small_model):
    _, loaded = small_model
    again = build_embedding_model(str(tmp_path / "again"), **SMALL, seed=3)
    other = build_embedding_model(str(tmp_path / "other"), **SMALL, seed=4)
    rng = np.random.default_rng(1)
    dense = rng.standard_normal((5, 6)).astype(np.float32)
    sparse = rng.integers(0, 200, size=(5, 5))
    ref = _call(loaded, dense, sparse)
    np.testing.assert_array_equal(_call(tf.saved_model.load(again), dense, sparse), ref)
    assert np.abs(_call(tf.saved_model.load(other), dense, sparse) - ref).max() > 1e-3


def test_ensure_reuses_only_an_identical_model(tmp_path):
    path = str(tmp_path / "m")
    assert ensure_embedding_model(path, **SMALL) is True
    stamp = (tmp_path / "m" / "saved_model.pb").stat().st_mtime_ns
    assert ensure_embedding_model(path, **SMALL) is False
    assert (tmp_path / "m" / "saved_model.pb").stat().st_mtime_ns == stamp
    assert ensure_embedding_model(path, **{**SMALL, "output_dim": 9}) is True
    assert json.loads((tmp_path / "m" / PARAMS_FILE).read_text())["output_dim"] == 9
    assert tf.saved_model.load(path).signatures["serving_default"].structured_outputs[
        "embedding"].shape.as_list() == [None, 9]
    # No staging directories are left next to the model.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_directory_without_params_is_rebuilt(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "junk.txt").write_text("not a model")
    assert saved_model_params(str(tmp_path / "m")) is None
    assert ensure_embedding_model(str(tmp_path / "m"), **SMALL) is True
    assert not (tmp_path / "m" / "junk.txt").exists()


@pytest.mark.parametrize("bad, message", [
    (dict(dense_dim=0), "dense_dim must be a positive int"),
    (dict(vocab=-1), "vocab must be a positive int"),
    (dict(hidden=(8, 0)), "hidden layer sizes must be > 0"),
    (dict(seed=-2), "seed must be a non-negative int"),
])
def test_bad_arguments_are_named(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        build_embedding_model(str(tmp_path / "m"), **bad)
    assert not (tmp_path / "m").exists()
    with pytest.raises(TypeError, match="unknown model arguments"):
        ensure_embedding_model(str(tmp_path / "m"), width=3)


def test_demo_and_reference_shapes():
    assert demo_model_kwargs() == dict(dense_dim=32, sparse_length=16, vocab=10000, embed_dim=16,
                                       hidden=(64,), output_dim=64)
    ref = reference_model_kwargs()
    # benchmarks/README.md: 256 dense, up to 32 ids into 1M x 64, MLP 512-256-128, 128-d output.
    assert (ref["dense_dim"], ref["sparse_length"], ref["vocab"], ref["embed_dim"]) == (256, 32, 10**6, 64)
    assert (*ref["hidden"], ref["output_dim"]) == (512, 256, 128)


def test_reference_model_builds_and_serves(tmp_path):
    path = build_embedding_model(str(tmp_path / "ref"), **reference_model_kwargs())
    loaded = tf.saved_model.load(path)
    assert loaded.id_table.shape.as_list() == [1_000_000, 64]
    table_bytes = 1_000_000 * 64 * 4
    saved = sum(f.stat().st_size for f in (tmp_path / "ref" / "variables").iterdir())
    assert table_bytes <= saved < table_bytes * 1.1  # the table is saved once, as a variable
    rng = np.random.default_rng(2)
    sparse = rng.integers(0, 10**10, size=(64, 32))
    got = _call(loaded, rng.standard_normal((64, 256)).astype(np.float32), sparse)
    assert got.shape == (64, 128)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # The chunked table fill reached the last rows.
    assert np.abs(loaded.id_table[-1].numpy()).sum() > 0
