"""twml.dataset: an export directory read with tf.data, checked against the general decoder.

Every record of real exports (the demo export, the tiny model's gzip export with two outputs,
and a hand-built export with every numeric dtype) must come out of the graph-mode parser exactly
as ``twml.decode`` decodes it. Records from another conformant writer (thriftpy2's own
serializer, map entries in another order, other tensor variants, extra fields) and every
single-byte corruption of a record must either decode to what the general decoder says or fail
with InvalidArgumentError: never decode to something else.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from twml.dataset import ExportedOutput, ExportLayout, export_dataset, parse_exported_records, read_export_layout
from twml.decode import decode_data_record, tensor_to_numpy
from twml.encode import encode_data_records
from twml.errors import RecordFormatError
from twml.feature_ids import feature_id
from twml.io.tfrecord import TFRecordWriter, read_tfrecords
from twml.schema import data_thrift, serialize, tensor_thrift

KEY_ID = feature_id("meta.user_id")
# (output name, feature, dtype, per-row shape): the embedding first, as exports write it.
OUTPUTS = [("embedding", "output", "float32", (5,)), ("pair", "user.pair", "float64", (2, 3)),
           ("count", "user.count", "int32", ()), ("ids", "user.ids", "int64", (4,)),
           ("bytes", "user.bytes", "uint8", (3,)), ("flags", "user.flags", "bool", (2,))]


def _columns(keys: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    b = len(keys)
    return {
        "embedding": rng.normal(size=(b, 5)).astype(np.float32),
        "pair": rng.normal(size=(b, 2, 3)),
        "count": rng.integers(-2**31, 2**31, size=b).astype(np.int32),
        "ids": rng.integers(-2**62, 2**62, size=(b, 4)),
        "bytes": rng.integers(0, 256, size=(b, 3)).astype(np.uint8),
        "flags": rng.integers(0, 2, size=(b, 2)).astype(bool),
    }


def _manifest(files, compression, outputs=OUTPUTS):
    return {
        "format": "tfrecord", "compression": compression, "num_shards": len(files),
        "shards": [{"file": f, "records": None, "bytes": None} for f in files],
        "key_feature": {"name": "meta.user_id", "id": KEY_ID},
        "embedding_feature": {"name": outputs[0][1], "id": feature_id(outputs[0][1])},
        "embedding_dim": outputs[0][3][0],
        "outputs": [{"output": o, "feature": f, "id": feature_id(f), "dtype": d, "shape": list(s)}
                    for o, f, d, s in outputs],
    }


def write_export(out_dir, compression="none", shards=3, users=50, seed=0):
    """An export directory laid out as docs/FORMAT.md says, written with the twml encoder."""
    os.makedirs(out_dir, exist_ok=True)
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    files = [f"part-{s:05d}-of-{shards:05d}{suffix}" for s in range(shards)]
    keys = np.random.default_rng(seed).integers(-2**63, 2**63 - 1, size=users, dtype=np.int64)
    columns = _columns(keys, seed)
    for s, name in enumerate(files):
        rows = np.arange(users)[s::shards]
        records = encode_data_records(keys[rows], KEY_ID,
                                      [(feature_id(f), columns[o][rows]) for o, f, _, _ in OUTPUTS])
        with TFRecordWriter(os.path.join(out_dir, name), compression=compression) as writer:
            writer.write_records(records)
    with open(os.path.join(out_dir, "_MANIFEST.json"), "w") as handle:
        json.dump(_manifest(files, compression), handle)
    open(os.path.join(out_dir, "_SUCCESS"), "w").close()
    return files


def general_decode(record: bytes, layout):
    """(key, embedding, {output: array}) of one record by the general decoder (thriftpy2)."""
    decoded = decode_data_record(record)
    key = decoded.discreteFeatures[layout.key_feature_id]
    values = [tensor_to_numpy(decoded.tensors[o.feature_id]) for o in layout.outputs]
    return key, values[0], {o.name: v for o, v in zip(layout.outputs[1:], values[1:])}


def assert_same(parsed, expected):
    key, embedding, others = parsed
    e_key, e_embedding, e_others = expected
    assert int(key) == int(e_key)
    np.testing.assert_array_equal(np.asarray(embedding), e_embedding)
    assert np.asarray(embedding).dtype == np.float32
    assert sorted(others) == sorted(e_others)
    for name, value in others.items():
        value = np.asarray(value)
        assert value.dtype == e_others[name].dtype and value.shape == e_others[name].shape, name
        np.testing.assert_array_equal(value, e_others[name])


def check_every_record(export_dir):
    """The dataset, unbatched and batched, against the general decoder on every record; returns the count."""
    layout = read_export_layout(export_dir)
    expected = [general_decode(r, layout) for path in layout.files for r in read_tfrecords(path)]
    got = list(export_dataset(export_dir).as_numpy_iterator())
    assert len(got) == len(expected)
    for parsed, want in zip(got, expected):
        assert_same(parsed, want)
    batched = list(export_dataset(export_dir, batch_size=7).as_numpy_iterator())
    assert sum(len(b[0]) for b in batched) == len(expected)
    flat = [(b[0][i], b[1][i], {k: v[i] for k, v in b[2].items()}) for b in batched for i in range(len(b[0]))]
    for parsed, want in zip(flat, expected):
        assert_same(parsed, want)
    return len(expected)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_every_dtype_and_shape_matches_the_general_decoder(tmp_path, compression):
    write_export(str(tmp_path), compression)
    assert check_every_record(str(tmp_path)) == 50


def test_the_demo_export_reads_as_the_general_decoder_says(tmp_path):
    from pipeline.demo.run import run_demo

    manifest = run_demo(str(tmp_path / "demo"), 1500, stream=open(os.devnull, "w"))
    export = str(tmp_path / "demo" / "export")
    assert check_every_record(export) == manifest["rows_written"] == 1500


def test_a_gzip_export_with_two_outputs_reads_as_the_general_decoder_says(tmp_path):
    from pipeline.job import run_export
    from pipeline.plan import preflight
    from pipeline_fixtures import tiny_config, tiny_model, write_users

    paths = write_users(str(tmp_path / "in"), 600, files=2)
    config = tiny_config(os.path.join(str(tmp_path / "in"), "*.parquet"), tiny_model(), str(tmp_path / "out"),
                         num_shards=3, compression="gzip")
    manifest = run_export(preflight(config))
    assert len(paths) == 2 and manifest["compression"] == "gzip"
    assert [o["output"] for o in manifest["outputs"]] == ["embedding", "score"]
    assert check_every_record(str(tmp_path / "out")) == manifest["rows_written"] == 600
    key, embedding, others = next(iter(export_dataset(str(tmp_path / "out"))))
    assert embedding.shape == (manifest["embedding_dim"],) and others["score"].shape == ()


# ------------------------------------------------------------------------------------------------
# Other writers, other layouts: decode right or fail loudly.

LAYOUT = ExportLayout(files=(), compression="none", key_feature_id=KEY_ID,
                      outputs=tuple(ExportedOutput(o, f, feature_id(f), d, s) for o, f, d, s in OUTPUTS))


def test_the_layout_is_what_the_manifest_says(tmp_path):
    files = write_export(str(tmp_path), shards=2, users=4)
    layout = read_export_layout(str(tmp_path))
    assert layout.outputs == LAYOUT.outputs and layout.key_feature_id == KEY_ID
    assert layout.files == tuple(os.path.join(str(tmp_path), f) for f in files)


def _raw(dtype: int, array: np.ndarray):
    return tensor_thrift.GeneralTensor(rawTypedTensor=tensor_thrift.RawTypedTensor(
        dataType=dtype, content=np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes(),
        shape=list(array.shape)))


_DATA_TYPE = {"float32": 0, "float64": 1, "int32": 2, "int64": 3, "uint8": 4, "bool": 7}


def thrift_record(key, values, order=None, **changes):
    """A record built and serialized by thriftpy2 (another conformant writer); ``order`` permutes
    the tensors map, ``changes`` replace DataRecord fields."""
    tensors = {}
    for j in order or range(len(OUTPUTS)):
        name, feature, dtype, _ = OUTPUTS[j]
        value = np.asarray(values[name])
        tensors[feature_id(feature)] = _raw(_DATA_TYPE[dtype], value.astype(np.uint8) if dtype == "bool" else value)
    fields = {"discreteFeatures": {KEY_ID: int(key)}, "tensors": tensors, **changes}
    return serialize(data_thrift.DataRecord(**fields))


def _one_row(seed=3):
    columns = _columns(np.zeros(1), seed)
    return {k: v[0] for k, v in columns.items()}


_PARSERS = {}


def parse_one(record: bytes, layout):
    """One record through the graph parser (a tf.function traced once per layout)."""
    if layout not in _PARSERS:
        _PARSERS[layout] = tf.function(lambda records: parse_exported_records(records, layout),
                                       input_signature=[tf.TensorSpec([None], tf.string)])
    key, embedding, others = _PARSERS[layout](tf.constant([record]))
    return key.numpy()[0], embedding.numpy()[0], {k: v.numpy()[0] for k, v in others.items()}


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 4, 3]])
def test_another_writer_with_any_tensor_map_order_decodes_right(tmp_path, order):
    layout = LAYOUT
    values = _one_row()
    record = thrift_record(-42, values, order)
    assert_same(parse_one(record, layout), general_decode(record, layout))
    assert parse_one(record, layout)[0] == -42
    if order == [0, 1, 2, 3, 4, 5]:  # in order, thriftpy2 and our encoder write the same bytes
        ours = encode_data_records(np.array([-42]), KEY_ID,
                                   [(feature_id(f), np.asarray(values[o])[None]) for o, f, _, _ in OUTPUTS])
        assert ours[0] == record


def _mutants():
    v = _one_row()
    emb_id, pair_id = feature_id("output"), feature_id("user.pair")
    base = thrift_record(7, v)

    def retensor(fid, tensor):
        rec = decode_data_record(base)
        rec.tensors[fid] = tensor
        return serialize(rec)

    def with_record(**changes):
        rec = decode_data_record(base)
        for name, value in changes.items():
            setattr(rec, name, value)
        return serialize(rec)

    floats = tensor_thrift.GeneralTensor(floatTensor=tensor_thrift.FloatTensor(
        floats=[float(x) for x in v["embedding"]], shape=[5]))
    no_shape = tensor_thrift.GeneralTensor(rawTypedTensor=tensor_thrift.RawTypedTensor(
        dataType=0, content=v["embedding"].astype("<f4").tobytes()))
    rec = decode_data_record(base)
    missing_one = dict(rec.tensors)
    del missing_one[pair_id]
    extra = dict(rec.tensors)
    extra[feature_id("user.other")] = _raw(2, np.array([1], np.int32))
    return {
        "embedding as a FloatTensor list": retensor(emb_id, floats),
        "embedding as DOUBLE": retensor(emb_id, _raw(1, v["embedding"].astype(np.float64))),
        "embedding of shape [1, 5]": retensor(emb_id, _raw(0, v["embedding"][None])),
        "embedding without shape": retensor(emb_id, no_shape),
        "embedding of dimension 4": retensor(emb_id, _raw(0, v["embedding"][:4])),
        "pair of shape [3, 2]": retensor(pair_id, _raw(1, v["pair"].reshape(3, 2))),
        "an output missing": with_record(tensors=missing_one),
        "an extra tensor": with_record(tensors=extra),
        "an extra discrete feature": with_record(discreteFeatures={KEY_ID: 7, feature_id("x"): 1}),
        "the key under another feature": with_record(discreteFeatures={feature_id("x"): 7}),
        "no key": with_record(discreteFeatures=None),
        "an extra field (continuousFeatures)": with_record(continuousFeatures={feature_id("x"): 1.0}),
        "an extra field after tensors (sparseTensors)": with_record(sparseTensors={}),
        "trailing garbage": base + b"\x00",
        "truncated": base[:-1],
    }


@pytest.mark.parametrize("what", sorted(_mutants()))
def test_other_conformant_layouts_fail_loudly(tmp_path, what):
    layout = LAYOUT
    record = _mutants()[what]
    if what not in ("trailing garbage", "truncated"):
        decode_data_record(record)   # valid Thrift for the general decoder: our parser must refuse it
    with pytest.raises(tf.errors.InvalidArgumentError, match="exported DataRecord"):
        parse_one(record, layout)


def test_every_single_byte_corruption_decodes_right_or_fails_loudly(tmp_path):
    layout = LAYOUT
    record = thrift_record(123456789, _one_row(), [3, 1, 0, 5, 2, 4])
    loud = right = 0
    for pos in range(len(record)):
        for flip in (0x01, 0x80):
            bad = bytearray(record)
            bad[pos] ^= flip
            bad = bytes(bad)
            try:
                parsed = parse_one(bad, layout)
            except tf.errors.InvalidArgumentError:
                loud += 1
                continue
            try:
                want = general_decode(bad, layout)
            except (RecordFormatError, KeyError, ValueError) as err:
                pytest.fail(f"byte {pos} ^ {flip:#x}: the graph parser decoded a record the general "
                            f"decoder refuses ({err})")
            assert_same(parsed, want)  # a changed key or value, read the same by both decoders
            right += 1
    assert loud and right and loud + right == 2 * len(record)


def test_the_parser_runs_in_a_tf_function_and_fails_there_too(tmp_path):
    layout = LAYOUT
    good = thrift_record(5, _one_row())
    bad = good[:-1] + b"\x01"

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def parse(records):
        return parse_exported_records(records, layout)

    keys, embeddings, others = parse(tf.constant([good, good]))
    assert keys.numpy().tolist() == [5, 5] and embeddings.shape == (2, 5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no stop byte after field 8"):
        parse(tf.constant([good, bad]))


def test_no_thriftpy2_at_read_time(tmp_path):
    write_export(str(tmp_path), "gzip", users=10)
    probe = (
        "import sys; sys.modules['thriftpy2'] = None\n"   # any import of thriftpy2 now fails
        "from twml.dataset import export_dataset\n"
        f"rows = list(export_dataset({str(tmp_path)!r}).as_numpy_iterator())\n"
        "assert len(rows) == 10, len(rows)\n"
        "assert not any(m == 'thriftpy2' or m.startswith('thriftpy2.') for m in sys.modules if sys.modules[m])\n"
        "print('ok', len(rows))\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok 10"


def test_exports_it_cannot_read_are_refused_with_what_to_use(tmp_path):
    write_export(str(tmp_path / "a"))
    os.remove(tmp_path / "a" / "_SUCCESS")
    with pytest.raises(FileNotFoundError, match="no _SUCCESS"):
        export_dataset(str(tmp_path / "a"))
    for change, message in [({"format": "block"}, "tfrecord exports only"),
                            ({"outputs": [{"output": "e", "feature": "output", "id": feature_id("output"),
                                           "dtype": "string", "shape": [2]}]}, "twml.decode"),
                            ({"outputs": [{"output": "e", "feature": "output", "id": feature_id("output"),
                                           "dtype": "float32", "shape": [None]}]}, "fixed shape")]:
        write_export(str(tmp_path / "b"))
        manifest = json.loads((tmp_path / "b" / "_MANIFEST.json").read_text())
        (tmp_path / "b" / "_MANIFEST.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(ValueError, match=message):
            export_dataset(str(tmp_path / "b"))


# ------------------------------------------------------------------------------------------------
# String keys: the key in stringFeatures (field 4), its int64 id in discreteFeatures (field 3).

KEY_ID_FEATURE = feature_id("meta.user_id.id")
STRING_LAYOUT = ExportLayout(files=(), compression="none", key_feature_id=KEY_ID, outputs=LAYOUT.outputs,
                             key_type="string", key_id_feature_id=KEY_ID_FEATURE)


def string_key_record(key: str, values, order=None) -> bytes:
    """A string-key record as thriftpy2 writes it (fields by id, map entries as given)."""
    return thrift_record(0, values, order, discreteFeatures={KEY_ID_FEATURE: feature_id(key)},
                         stringFeatures={KEY_ID: key})


def general_decode_string_key(record: bytes, layout):
    decoded = decode_data_record(record)
    key = decoded.stringFeatures[layout.key_feature_id]
    assert decoded.discreteFeatures[layout.key_id_feature_id] is not None
    _, embedding, others = general_decode(
        serialize(data_thrift.DataRecord(discreteFeatures={layout.key_feature_id: 0}, tensors=decoded.tensors)),
        layout)
    return (key.encode("utf-8") if isinstance(key, str) else key), embedding, others


def test_a_string_key_export_reads_with_its_keys(tmp_path):
    keys = ["user-1", "ünïcode", "with#hash", "a" * 300, "x"]
    rows = [_one_row(seed) for seed in range(len(keys))]
    path = tmp_path / "part-00000-of-00001.tfrecord.gz"
    with TFRecordWriter(str(path), compression="gzip") as writer:
        for key, row in zip(keys, rows):
            writer.write(string_key_record(key, row, [1, 0, 2, 3, 4, 5]))
    manifest = {**_manifest([path.name], "gzip"), "key_type": "string",
                "key_id_feature": {"name": "meta.user_id.id", "id": KEY_ID_FEATURE}}
    (tmp_path / "_MANIFEST.json").write_text(json.dumps(manifest))
    (tmp_path / "_SUCCESS").write_text("")
    assert read_export_layout(str(tmp_path)) == ExportLayout(
        (str(path),), "gzip", KEY_ID, LAYOUT.outputs, "string", KEY_ID_FEATURE)
    got = list(export_dataset(str(tmp_path)).as_numpy_iterator())
    assert [g[0] for g in got] == [k.encode("utf-8") for k in keys]
    for parsed, record in zip(got, read_tfrecords(str(path))):
        assert_same((0, parsed[1], parsed[2]), (0, *general_decode_string_key(record, STRING_LAYOUT)[1:]))
    batched = next(iter(export_dataset(str(tmp_path), batch_size=8)))
    assert batched[0].dtype == tf.string and batched[1].shape == (5, 5)


def test_string_key_records_decode_right_or_fail_loudly_on_every_byte():
    record = string_key_record("user-42", _one_row(), [4, 0, 1, 2, 3, 5])
    parser = tf.function(lambda r: parse_exported_records(r, STRING_LAYOUT),
                         input_signature=[tf.TensorSpec([None], tf.string)])
    key, embedding, others = parser(tf.constant([record]))
    assert key.numpy()[0] == b"user-42"
    loud = right = 0
    for pos in range(len(record)):
        bad = bytearray(record)
        bad[pos] ^= 0x01
        bad = bytes(bad)
        try:
            key, embedding, others = parser(tf.constant([bad]))
        except tf.errors.InvalidArgumentError:
            loud += 1
            continue
        try:
            want = general_decode_string_key(bad, STRING_LAYOUT)
        except (RecordFormatError, KeyError, ValueError, TypeError) as err:
            pytest.fail(f"byte {pos}: the graph parser decoded a record the general decoder refuses ({err})")
        assert_same((0, embedding.numpy()[0], {k: v.numpy()[0] for k, v in others.items()}), (0, *want[1:]))
        assert key.numpy()[0] == want[0]
        right += 1
    assert loud and right and loud + right == len(record)
    for wrong in (thrift_record(0, _one_row(), stringFeatures={KEY_ID: "u"}),   # no key id
                  string_key_record("u", _one_row()) [:-1],
                  serialize(data_thrift.DataRecord(discreteFeatures={KEY_ID_FEATURE: 1},
                                                   stringFeatures={KEY_ID: "u", feature_id("y"): "v"},
                                                   tensors=decode_data_record(record).tensors))):
        with pytest.raises(tf.errors.InvalidArgumentError, match="exported DataRecord"):
            parser(tf.constant([wrong]))


@pytest.mark.parametrize("layout", [LAYOUT, STRING_LAYOUT], ids=["int64 keys", "string keys"])
def test_an_empty_batch_parses_to_empty_tensors(layout):
    keys, embeddings, others = parse_exported_records(tf.constant([], tf.string), layout)
    assert keys.shape == (0,) and embeddings.shape == (0, 5)
    assert others["pair"].shape == (0, 2, 3) and others["count"].shape == (0,)
