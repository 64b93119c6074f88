"""``embedding-export inspect DIR --plot FILE.png``: one figure to judge an export at a glance.

Three panels: records per shard (balance; from the manifest, which ``verify`` checks against the
files), a histogram of embedding L2 norms, and a 2-D PCA scatter of the embeddings coloured by
shard (well-mixed colours mean placement does not depend on the embedding; a 1-d embedding gets
a histogram of its values instead). An export with further model outputs gets a fourth panel
summarising them (values of a scalar output, L2 norms of a vector one); the embedding is always
the manifest's ``embedding_feature``, never another output. The norms and the
scatter use a sample read from the start of the shards (up to ``MAX_SAMPLED_SHARDS`` of them,
chosen evenly), so a plot costs about ``sample`` decoded records whatever the export's size.
Hash placement makes each shard a random slice of the users; the first records of a shard are
only as random as the input order within it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from pipeline.tools.exports import DEFAULT_BATCH_SIZE, file_size, iter_record_batches
from transforms.outputdir import ExportManifest, join_path, read_manifest
from twml.decode import decode_data_record, decode_embeddings, tensor_to_numpy

__all__ = ["DEFAULT_SAMPLE", "MAX_SAMPLED_SHARDS", "EmbeddingSample", "sample_embeddings", "pca_2d",
           "plot_export"]

DEFAULT_SAMPLE = 20000
MAX_SAMPLED_SHARDS = 64
_DEGENERATE_SPREAD = 1e-3   # norms within this fraction of their median: draw a fixed window


@dataclass(frozen=True)
class EmbeddingSample:
    """Embeddings read from an export: ``embeddings`` [n, D] float32, the shard of each row, and
    ``others``: {feature: [n, k] float64 values} of each further numeric output (record order)."""
    embeddings: np.ndarray
    shards: np.ndarray
    others: Dict[str, np.ndarray] = field(default_factory=dict)

    def take(self, rows: np.ndarray) -> "EmbeddingSample":
        return EmbeddingSample(self.embeddings[rows], self.shards[rows],
                               {name: values[rows] for name, values in self.others.items()})


def _other_values(batch, manifest: ExportManifest, path: str) -> Dict[str, np.ndarray]:
    """{feature: [B, k] float64} of the batch's further numeric outputs (decoded record by record;
    a record without the output, or a non-numeric output, gives NaN)."""
    outputs = [o for o in manifest.other_outputs if o.dtype not in ("string", "object")]
    size = {o.feature: int(np.prod([d or 1 for d in o.shape], dtype=np.int64)) for o in outputs}
    values = {o.feature: np.full((len(batch), size[o.feature]), np.nan) for o in outputs}
    for i in range(len(batch)):
        tensors = decode_data_record(batch.records[i], path).tensors or {}
        for o in outputs:
            tensor = tensors.get(o.id)
            if tensor is None:
                continue
            array = tensor_to_numpy(tensor).reshape(-1)
            if array.dtype.kind in "fiub" and array.size == size[o.feature]:
                values[o.feature][i] = array.astype(np.float64)
    return values


def sample_embeddings(path: str, manifest: ExportManifest, sample: int) -> EmbeddingSample:
    """Up to ``sample`` embeddings, an equal share from the start of each sampled shard."""
    if sample <= 0:
        raise ValueError(f"sample must be > 0, got {sample}")
    chosen = np.unique(np.linspace(0, manifest.num_shards - 1,
                                   min(manifest.num_shards, MAX_SAMPLED_SHARDS)).round().astype(int))
    quota = math.ceil(sample / len(chosen))
    parts: List[np.ndarray] = []
    shard_ids: List[np.ndarray] = []
    others: Dict[str, List[np.ndarray]] = {}
    for shard in chosen.tolist():
        if shard >= len(manifest.shards):
            continue
        file_path = join_path(path, manifest.shards[shard].file)
        if file_size(file_path) is None:
            continue
        taken = 0
        for batch in iter_record_batches(file_path, manifest.format, min(quota, DEFAULT_BATCH_SIZE),
                                         manifest.string_keys):
            _, embeddings = decode_embeddings(batch.records, manifest.int_key_feature_id,
                                              manifest.embedding_feature_id, file_path)
            embeddings = embeddings[:quota - taken]
            for name, values in _other_values(batch, manifest, file_path).items():
                others.setdefault(name, []).append(values[:quota - taken])
            parts.append(embeddings)
            shard_ids.append(np.full(len(embeddings), shard))
            taken += len(embeddings)
            if taken >= quota:
                break
    if not parts:
        return EmbeddingSample(np.zeros((0, manifest.embedding_dim), np.float32), np.zeros(0, int))
    return EmbeddingSample(np.concatenate(parts)[:sample], np.concatenate(shard_ids)[:sample],
                           {name: np.concatenate(values)[:sample] for name, values in others.items()})


def pca_2d(embeddings: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(points [n, 2], explained variance ratio of the 2 components) by SVD of the centred data."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        return np.zeros((len(x), 2)), np.zeros(2)
    x = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x, full_matrices=False)
    points = np.zeros((len(x), 2))
    k = min(2, vt.shape[0])
    points[:, :k] = x @ vt[:k].T
    variance = singular ** 2
    ratio = np.zeros(2)
    if variance.sum() > 0:
        ratio[:k] = variance[:k] / variance.sum()
    return points, ratio


def _plot_balance(ax, manifest: ExportManifest) -> str:
    counts = np.array([s.records for s in manifest.shards], dtype=np.int64)
    mean = counts.mean() if len(counts) else 0.0
    ax.bar(np.arange(len(counts)), counts, width=0.85 if len(counts) <= 100 else 1.0, color="#4C72B0")
    ax.axhline(mean, color="#C44E52", linestyle="--", linewidth=1.2, label=f"mean {mean:,.0f}")
    imbalance = counts.max() / mean if mean else float("nan")
    ax.set_title(f"Shard balance: max/mean = {imbalance:.3f}")
    ax.set_xlabel(f"shard (of {manifest.num_shards})")
    ax.set_ylabel("records (from _MANIFEST.json)")
    if len(counts) <= 32:
        ax.set_xticks(np.arange(len(counts)))
        ax.tick_params(axis="x", labelsize=8)
    ax.legend(loc="lower right", fontsize=9)
    return f"shard max/mean {imbalance:.3f}"


def _plot_norms(ax, embeddings: np.ndarray) -> str:
    norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    ax.set_xlabel("L2 norm of the embedding")
    ax.set_ylabel("records in sample")
    if not len(norms):
        ax.set_title("Embedding norms: no finite embeddings")
        return "no finite embeddings"
    median = float(np.median(norms))
    spread = float(norms.max() - norms.min())
    if spread <= _DEGENERATE_SPREAD * max(median, 1e-12):
        # All (nearly) equal, e.g. L2-normalised: auto-scaled bins would show float noise.
        window = max(0.05 * median, 1e-6)
        # 41 bins, so the median sits in the middle of one rather than on an edge.
        ax.hist(norms, bins=np.linspace(median - window, median + window, 42), color="#55A868")
        ax.set_xlim(median - window, median + window)
        ax.set_title(f"Embedding norms: all {median:.4f} (spread {spread:.1e})")
    else:
        ax.hist(norms, bins=50, color="#55A868")
        ax.set_title(f"Embedding norms: median {median:.3g}, range {norms.min():.3g} to {norms.max():.3g}")
    ax.axvline(median, color="#333333", linestyle=":", linewidth=1)
    return f"norm median {median:.4g}"


def _plot_pca(ax, sample: EmbeddingSample, num_shards: int) -> str:
    if sample.embeddings.ndim == 2 and sample.embeddings.shape[1] < 2:
        # One dimension has no 2-D projection: show its values instead of a degenerate scatter.
        values = sample.embeddings.reshape(-1).astype(np.float64)
        ax.hist(values, bins=50, color="#8172B2")
        ax.set_title(f"Embedding values (dimension 1: no PCA), {len(values):,} sampled")
        ax.set_xlabel("embedding value")
        ax.set_ylabel("records in sample")
        return "embedding dim 1, no PCA"
    points, ratio = pca_2d(sample.embeddings)
    if num_shards <= 20:
        colours = {"c": sample.shards, "cmap": "tab20" if num_shards > 10 else "tab10",
                   "vmin": -0.5, "vmax": (19.5 if num_shards > 10 else 9.5)}
    else:
        colours = {"c": sample.shards, "cmap": "viridis", "vmin": 0, "vmax": num_shards - 1}
    scatter = ax.scatter(points[:, 0], points[:, 1], s=5, alpha=0.55, linewidths=0, **colours)
    ax.set_title(f"2-D PCA of {len(points):,} sampled embeddings")
    ax.set_xlabel(f"PC1 ({ratio[0]:.1%} of variance)")
    ax.set_ylabel(f"PC2 ({ratio[1]:.1%} of variance)")
    if len(points):
        bar = ax.figure.colorbar(scatter, ax=ax, pad=0.01)
        bar.set_label("shard")
        if num_shards <= 20:
            bar.set_ticks(range(num_shards))
            bar.ax.set_ylim(-0.5, num_shards - 0.5)
    return f"PCA {ratio[0]:.1%}+{ratio[1]:.1%} of variance"


def _plot_others(ax, others: Dict[str, np.ndarray]) -> str:
    """The further outputs summarised: a scalar's values, a vector's L2 norms, one histogram each."""
    notes = []
    for name, values in others.items():
        finite = np.isfinite(values).all(axis=1)
        values = values[finite]
        scalar = values.shape[1] == 1
        shown = values[:, 0] if scalar else np.linalg.norm(values, axis=1)
        label = name if scalar else f"|{name}| (dim {values.shape[1]})"
        if len(shown):
            ax.hist(shown, bins=50, alpha=0.6, label=label)
            notes.append(f"{label} median {float(np.median(shown)):.4g}, range {float(shown.min()):.4g} to "
                         f"{float(shown.max()):.4g}")
        else:
            notes.append(f"{label}: no finite values")
    ax.set_title("Other outputs: " + ("; ".join(notes) if len(notes) == 1 else f"{len(notes)} outputs"),
                 fontsize=10)
    ax.set_xlabel("value (scalar outputs) or L2 norm (vector outputs)")
    ax.set_ylabel("records in sample")
    if notes:
        ax.legend(loc="upper right", fontsize=8)
    return "other outputs: " + "; ".join(notes)


def _short(path: str, limit: int = 60) -> str:
    return path if len(path) <= limit else "..." + path[-(limit - 3):]


def plot_export(path: str, out_png: str, sample: int = DEFAULT_SAMPLE) -> str:
    """Write the PNG for the export at ``path``; return a one-line summary. Three panels, plus a
    fourth summarising the further model outputs when the export has any.

    Args:
      path: the export directory.
      out_png: the PNG file to write.
      sample: embeddings read for the norm histogram and the PCA scatter.
    """
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    manifest = read_manifest(path)
    drawn = sample_embeddings(path, manifest, sample)
    finite = np.isfinite(drawn.embeddings).all(axis=1)
    clean = drawn.take(finite)
    panels = 4 if clean.others else 3
    fig, axes = plt.subplots(1, panels, figsize=(17 * panels / 3, 5.2), dpi=100, constrained_layout=True)
    try:
        notes = [_plot_balance(axes[0], manifest), _plot_norms(axes[1], clean.embeddings),
                 _plot_pca(axes[2], clean, manifest.num_shards)]
        if clean.others:
            notes.append(_plot_others(axes[3], clean.others))
        total = sum(s.records for s in manifest.shards)
        dropped = f"; {int((~finite).sum())} non-finite left out" if (~finite).any() else ""
        fig.suptitle(f"{_short(path)}: {total:,} records, {manifest.num_shards} "
                     f"{manifest.format} shards, embedding dim {manifest.embedding_dim}{dropped}",
                     fontsize=13)
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.savefig(out_png)
    finally:
        plt.close(fig)
    return ", ".join(notes)
