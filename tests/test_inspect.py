"""``pipeline.tools.inspection`` (records as JSON lines, key lookup) and ``pipeline.tools.plots`` (the PNG)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.tools.exports import ShardReadError
from pipeline.tools.inspection import iter_records, main
from transforms.outputdir import parse_shard_file_name, read_manifest, shard_file_name
from pipeline.tools.plots import pca_2d, plot_export, sample_embeddings
from test_verify import EMBEDDING_FEATURE, KEY_FEATURE, REPO, _shard_path, write_export, write_shard
from twml.sharding import shard_of_keys
from twml.feature_ids import feature_id


def _strict_json(line: str):
    def reject(constant):
        raise AssertionError(f"not valid JSON: bare {constant} in {line[:200]}")
    return json.loads(line, parse_constant=reject)


@pytest.mark.parametrize("fmt,compression", [("tfrecord", "none"), ("block", "gzip"), ("parquet", "none")])
def test_head_gives_the_first_records_with_feature_names(tmp_path, fmt, compression):
    export = write_export(tmp_path / "export", fmt, compression)
    rows = list(iter_records(str(export["path"]), head=5))
    assert len(rows) == 5
    first_shard = np.flatnonzero(export["shards"] == 0)
    for i, row in enumerate(rows):
        user = first_shard[i]
        assert (row["file"], row["record"]) == (shard_file_name(0, 4, fmt, compression), i)
        assert row["key"] == export["keys"][user]
        assert row["discreteFeatures"] == {KEY_FEATURE: int(export["keys"][user])}
        tensor = row["tensors"][EMBEDDING_FEATURE]
        assert tensor["dtype"] == "float32" and tensor["shape"] == [8]
        np.testing.assert_array_equal(np.array(tensor["values"], np.float32), export["embeddings"][user])
        assert set(row) == {"file", "record", "key", "discreteFeatures", "tensors"}


def test_unnamed_features_show_their_ids(tmp_path):
    export = write_export(tmp_path / "export")
    (row,) = iter_records(str(export["path"]), head=1, named=False)
    assert set(row["discreteFeatures"]) == {str(feature_id(KEY_FEATURE))}
    assert set(row["tensors"]) == {str(feature_id(EMBEDDING_FEATURE))}


def test_key_lookup_reads_only_the_keys_shard(tmp_path):
    export = write_export(tmp_path / "export")
    user = 123
    key, shard = int(export["keys"][user]), int(export["shards"][user])
    for other in range(4):   # damage every other shard: a lookup must not need them
        if other != shard:
            _shard_path(export, other).write_bytes(b"not a tfrecord at all")
    (row,) = iter_records(str(export["path"]), key=key)
    assert row["key"] == key and row["file"] == shard_file_name(shard, 4, "tfrecord")
    np.testing.assert_array_equal(np.array(row["tensors"]["output"]["values"], np.float32),
                                  export["embeddings"][user])
    absent = next(k for k in range(1, 1000) if shard_of_keys(np.array([k]), 4)[0] == shard)
    assert list(iter_records(str(export["path"]), key=absent)) == []


def test_key_lookup_scans_every_shard_when_placed_by_column(tmp_path):
    export = write_export(tmp_path / "export", by="column")
    user = 77
    (row,) = iter_records(str(export["path"]), key=int(export["keys"][user]))
    assert row["file"] == shard_file_name(int(export["shards"][user]), 4, "tfrecord")
    _shard_path(export, 3).write_bytes(b"garbage!")
    with pytest.raises(ShardReadError) as err:
        list(iter_records(str(export["path"]), key=-1))
    assert err.value.path.endswith(shard_file_name(3, 4, "tfrecord")) and err.value.record == 0


def test_shard_file_names_round_trip():
    assert shard_file_name(3, 16, "block", "gzip") == "part-00003-of-00016.gz"
    assert shard_file_name(3, 16, "parquet") == "part-00003-of-00016.parquet"
    assert parse_shard_file_name("part-00003-of-00016.tfrecord.gz") == (3, 16)
    assert parse_shard_file_name("_MANIFEST.json") is None


def test_main_prints_json_lines(tmp_path, capsys):
    export = write_export(tmp_path / "export")
    assert main([str(export["path"]), "--head", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert [_strict_json(line)["record"] for line in lines] == [0, 1, 2]
    assert main([str(export["path"])]) == 0            # default: the first 10
    assert len(capsys.readouterr().out.splitlines()) == 10
    key = int(export["keys"][5])
    assert main([str(export["path"]), "--key", str(key), "--ids"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert _strict_json(line)["discreteFeatures"] == {str(feature_id(KEY_FEATURE)): key}


def test_main_errors(tmp_path, capsys):
    export = write_export(tmp_path / "export")
    assert main([str(tmp_path / "nowhere")]) == 2
    assert main([str(export["path"]), "--key", "1"]) == 1
    assert "no record with key 1" in capsys.readouterr().err
    _shard_path(export, 0).write_bytes(b"\x01" * 40)
    assert main([str(export["path"]), "--head", "1"]) == 1
    err = capsys.readouterr().err
    assert "part-00000-of-00004.tfrecord" in err and "offset 0" in err


def test_non_finite_values_print_as_valid_json(tmp_path, capsys):
    export = write_export(tmp_path / "export", crc32c=False)
    rows = np.flatnonzero(export["shards"] == 0)
    emb = export["embeddings"][rows].copy()
    emb[0, :3] = [np.nan, np.inf, -np.inf]
    write_shard(_shard_path(export, 0), "tfrecord", "none", export["keys"][rows], emb)
    assert main([str(export["path"]), "--head", "1"]) == 0
    values = _strict_json(capsys.readouterr().out)["tensors"]["output"]["values"]
    assert values[:3] == ["nan", "inf", "-inf"]


def test_pca_recovers_a_plane():
    rng = np.random.default_rng(1)
    plane = rng.standard_normal((500, 2)) * [5.0, 1.0]
    basis, _ = np.linalg.qr(rng.standard_normal((16, 2)))
    points, ratio = pca_2d(plane @ basis.T + 3.0)
    assert ratio.sum() == pytest.approx(1.0) and ratio[0] > ratio[1]
    # distances within the plane are kept exactly by the projection
    d_in = np.linalg.norm(plane[:50, None] - plane[None, :50], axis=-1)
    d_out = np.linalg.norm(points[:50, None] - points[None, :50], axis=-1)
    np.testing.assert_allclose(d_out, d_in, atol=1e-9)


def test_sample_takes_an_equal_share_of_each_shard(tmp_path):
    export = write_export(tmp_path / "export", users=1000)
    sample = sample_embeddings(str(export["path"]), read_manifest(str(export["path"])), 100)
    assert sample.embeddings.shape == (100, 8)
    assert np.bincount(sample.shards, minlength=4).tolist() == [25, 25, 25, 25]


def test_plot_writes_a_three_panel_png(tmp_path, capsys):
    import matplotlib.image

    export = write_export(tmp_path / "export", "parquet", users=2000, dim=16, normalize=False)
    out = tmp_path / "export.png"
    assert main([str(export["path"]), "--plot", str(out), "--sample", "500"]) == 0
    assert capsys.readouterr().out == ""   # --plot alone prints no records
    image = matplotlib.image.imread(str(out))
    assert image.shape[0] >= 400 and image.shape[1] >= 3 * image.shape[0] / 1.2
    assert image.std() > 0.05   # not a blank canvas
    summary = plot_export(str(export["path"]), str(tmp_path / "again.png"), sample=300)
    assert "shard max/mean" in summary and "PCA" in summary


def test_real_export_inspects(tmp_path):
    from pipeline.demo.run import run_demo
    run_demo(str(tmp_path / "demo"), users=400, stream=io.StringIO())
    export = str(tmp_path / "demo" / "export")
    rows = list(iter_records(export, head=3))
    assert len(rows) == 3 and all("output" in r["tensors"] and r["discreteFeatures"] == {KEY_FEATURE: r["key"]}
                                  for r in rows)
    (again,) = iter_records(export, key=rows[2]["key"])
    assert again == rows[2]
    out = Path(tmp_path / "demo.png")
    plot_export(export, str(out), sample=400)
    assert out.stat().st_size > 10_000
