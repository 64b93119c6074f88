"""Model builders: deterministic TF embedding models saved as SavedModels (the demo and benchmark models).

The model has the shape of a production user-embedding tower: sparse ids go through an id-embedding
table (ids taken modulo the vocabulary, 0 = padding, masked out) and are mean-pooled over the
non-pad ids, concatenated with the dense features, run through an MLP with ReLU hidden layers and a
final linear layer, and L2-normalised. Weights come from a seeded numpy generator (no training), so
the same arguments always give the same model, and the SavedModel's ``serving_default`` signature
is the contract the export job is configured against:

    dense       float32 [None, dense_dim]
    sparse_ids  int64   [None, sparse_length]     -> {"embedding": float32 [None, output_dim]}

Next to the SavedModel files the builder writes ``embedding_model.json`` (the build arguments), so
``ensure_embedding_model`` can reuse a model that was already built with the same arguments.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from pipeline.demo.staging import staged_directory
from transforms.tf_runtime import import_tensorflow

__all__ = ["PARAMS_FILE", "SIGNATURE", "build_embedding_model", "ensure_embedding_model",
           "saved_model_params", "demo_model_kwargs", "reference_model_kwargs"]

PARAMS_FILE = "embedding_model.json"
SIGNATURE = "serving_default"
# Rows of the id table drawn per numpy call: bounds the transient memory of a big table to a few MB.
_TABLE_CHUNK_ROWS = 65536


def demo_model_kwargs() -> Dict[str, Any]:
    """Builder arguments of the built-in demo model (small: a few hundred KB)."""
    return dict(dense_dim=32, sparse_length=16, vocab=10000, embed_dim=16, hidden=(64,), output_dim=64)


def reference_model_kwargs() -> Dict[str, Any]:
    """Builder arguments of the benchmark reference model (benchmarks/README.md).

    256 dense features and up to 32 sparse ids into a 1M x 64 id table (256 MB of float32), an MLP
    512-256-128 (two ReLU layers of 512 and 256, then the linear 128-d output layer), L2-normalised.
    """
    return dict(dense_dim=256, sparse_length=32, vocab=1_000_000, embed_dim=64, hidden=(512, 256),
                output_dim=128)


def _normalise_params(dense_dim: int, sparse_length: int, vocab: int, embed_dim: int,
                      hidden: Sequence[int], output_dim: int, seed: int) -> Dict[str, Any]:
    params = dict(dense_dim=dense_dim, sparse_length=sparse_length, vocab=vocab, embed_dim=embed_dim,
                  hidden=[int(h) for h in hidden], output_dim=output_dim, seed=seed)
    for name, value in params.items():
        if name == "hidden":
            if any(h <= 0 for h in value):
                raise ValueError(f"hidden layer sizes must be > 0, got {list(hidden)}")
        elif name == "seed":
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"seed must be a non-negative int, got {value!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return params


def _dense_weights(rng: np.random.Generator, sizes: Sequence[int]) -> list:
    """(kernel, bias) per layer for layer widths sizes[0] -> sizes[1] -> ...; He-scaled normal kernels."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        kernel = rng.standard_normal((fan_in, fan_out), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        bias = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.01)
        layers.append((kernel, bias))
    return layers


def _make_module(params: Dict[str, Any]):
    """The tf.Module with seeded weights and a ``serve`` tf.function (the serving signature)."""
    tf = import_tensorflow()

    rng = np.random.default_rng(params["seed"])
    vocab, embed_dim = params["vocab"], params["embed_dim"]
    module = tf.Module(name="embedding_model")
    # Fill the table chunk by chunk in place: a 1M x 64 table is 256 MB, and building it as one
    # numpy array first (or with sliced assigns, which copy the variable) would hold it twice.
    module.id_table = tf.Variable(tf.zeros([vocab, embed_dim], tf.float32), name="id_table")
    scale = np.float32(1.0 / np.sqrt(embed_dim))
    for start in range(0, vocab, _TABLE_CHUNK_ROWS):
        stop = min(start + _TABLE_CHUNK_ROWS, vocab)
        chunk = rng.standard_normal((stop - start, embed_dim), dtype=np.float32) * scale
        module.id_table.scatter_update(tf.IndexedSlices(chunk, tf.range(start, stop)))
    sizes = [params["dense_dim"] + embed_dim, *params["hidden"], params["output_dim"]]
    layers = _dense_weights(rng, sizes)
    module.kernels = [tf.Variable(k, name=f"kernel_{i}") for i, (k, _) in enumerate(layers)]
    module.biases = [tf.Variable(b, name=f"bias_{i}") for i, (_, b) in enumerate(layers)]
    del layers

    @tf.function(input_signature=[
        tf.TensorSpec([None, params["dense_dim"]], tf.float32, name="dense"),
        tf.TensorSpec([None, params["sparse_length"]], tf.int64, name="sparse_ids")])
    def serve(dense, sparse_ids):
        present = tf.cast(tf.not_equal(sparse_ids, 0), tf.float32)[:, :, None]          # [B, L, 1]
        rows = tf.math.floormod(sparse_ids, vocab)
        pooled = tf.reduce_sum(tf.gather(module.id_table, rows) * present, axis=1)       # [B, E]
        pooled = pooled / tf.maximum(tf.reduce_sum(present, axis=1), 1.0)
        x = tf.concat([dense, pooled], axis=1)
        last = len(module.kernels) - 1
        for i, (kernel, bias) in enumerate(zip(module.kernels, module.biases)):
            x = tf.matmul(x, kernel) + bias
            if i < last:
                x = tf.nn.relu(x)
        return {"embedding": tf.math.l2_normalize(x, axis=1)}

    module.serve = serve
    return module


def build_embedding_model(path: str, *, dense_dim: int = 32, sparse_length: int = 16, vocab: int = 10000,
                          embed_dim: int = 16, hidden: Sequence[int] = (64,), output_dim: int = 64,
                          seed: int = 0) -> str:
    """Build the seeded embedding model and save it as a SavedModel at ``path`` (replacing it).

    Args:
      path: directory of the SavedModel; written to a sibling temp directory and renamed into
        place, so a crash never leaves a half-written model behind.
      dense_dim: width of the ``dense`` float32 input.
      sparse_length: width of the ``sparse_ids`` int64 input (0 = padding).
      vocab: rows of the id-embedding table; an id maps to row ``id mod vocab``.
      embed_dim: width of the id-embedding table.
      hidden: widths of the ReLU hidden layers, in order.
      output_dim: width of the L2-normalised ``embedding`` output.
      seed: numpy seed of every weight.
    Returns:
      ``path``.
    """
    tf = import_tensorflow()

    params = _normalise_params(dense_dim, sparse_length, vocab, embed_dim, hidden, output_dim, seed)
    target = Path(path)
    with staged_directory(target, prefix=f".{target.name}.building-") as staging:
        module = _make_module(params)
        tf.saved_model.save(module, str(staging), signatures={SIGNATURE: module.serve})
        (staging / PARAMS_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        del module
    return str(path)


def saved_model_params(path: str) -> Optional[Dict[str, Any]]:
    """The build arguments recorded with a model built here, or None (absent, foreign or unreadable)."""
    try:
        params = json.loads((Path(path) / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (Path(path) / "saved_model.pb").is_file():
        return None
    return params if isinstance(params, dict) else None


def ensure_embedding_model(path: str, **kwargs: Any) -> bool:
    """Build the model at ``path`` unless one built with the same arguments is already there.

    Takes the keyword arguments of ``build_embedding_model``. Returns True when it built.
    """
    defaults = dict(dense_dim=32, sparse_length=16, vocab=10000, embed_dim=16, hidden=(64,),
                    output_dim=64, seed=0)
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unknown model arguments: {sorted(unknown)}")
    wanted = _normalise_params(**{**defaults, **kwargs})
    if saved_model_params(path) == wanted:
        return False
    build_embedding_model(path, **{**defaults, **kwargs})
    return True
