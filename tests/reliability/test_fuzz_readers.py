"""Guarantee 6: every reader, fed mutated and random bytes, raises only its documented error, within
bounded time and memory. Over 100,000 inputs in all:

- DataRecord decode (``decode_data_record``, ``decode_batch_prediction_response``,
  ``decode_embeddings``, the last alone and after a valid record): RecordFormatError only, with
  the path and an offset inside the mutated record;
- TFRecord and block readers (``iter_tfrecords``, ``iter_block_records``), plain and gzip:
  RecordFormatError only, with the path and an offset inside the stream;
- verify (``verify_export``) on real exports whose shard file or manifest was mutated: never
  raises, and reports a problem whenever a shard's bytes changed.

The bulk comes from a seeded ``random.Random`` mutator (bit flips, byte and length-field
overwrites with extreme values, truncation, insertion, deletion, splices of valid inputs,
random bytes); hypothesis adds shrinking-friendly cases. A failure prints the reader, seed and
case number, and the input's hex, so it can be replayed. Per input: the slowest call is
bounded (1 s); under tracemalloc, a sample with length-field attacks is bounded in peak memory;
the process's RSS must not grow by more than 64 MiB over the run.
"""
import gzip
import io
import os
import random
import struct
import time
import tracemalloc

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline.tools.verify import verify_export
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import FIGURES
from twml.decode import decode_batch_prediction_response, decode_data_record, decode_embeddings
from twml.encode import encode_batch_prediction_response, encode_data_records
from twml.errors import RecordFormatError
from twml.feature_ids import feature_id
from twml.io.block import encode_block, iter_block_records
from twml.io.tfrecord import frame_tfrecords, iter_tfrecords
from twml.schema import data_thrift, serialize, tensor_thrift as tt

pytestmark = pytest.mark.timeout(240)

SEED = 20240611
KEY_ID = feature_id("meta.user_id")
EMB_ID = feature_id("output")
MAX_SECONDS_PER_INPUT = 1.0
MAX_TRACED_PEAK = 4 << 20          # bytes a single small input may cost, whatever it claims
MAX_RSS_GROWTH = 64 << 20
BULK = {"datarecord": 42_000, "tfrecord": 20_000, "tfrecord.gz": 5_000, "block": 20_000, "block.gz": 5_000}
VERIFY_CASES = 4_500
FUZZ = FIGURES.setdefault("fuzz inputs run (reader: inputs, slowest call)", [])
RUN = FIGURES.setdefault("distinct fuzz inputs, all tests of test_fuzz_readers (total)", [0])

RECORDS = encode_data_records(np.array([7, -8, 2 ** 40]), KEY_ID, [
    (EMB_ID, np.arange(12, dtype=np.float32).reshape(3, 4)),
    (feature_id("user.score"), np.array([0.5, -1.0, 3.0])),
    (5, np.array([["ab", "c"], ["", "d"], ["e", "f"]], dtype=object))])
RICH = serialize(data_thrift.DataRecord(
    binaryFeatures={1, 2}, continuousFeatures={3: 1.5}, discreteFeatures={KEY_ID: 9}, stringFeatures={4: "s"},
    sparseBinaryFeatures={5: {"x"}}, sparseContinuousFeatures={6: {"y": 2.0}}, blobFeatures={7: b"b"},
    tensors={EMB_ID: tt.GeneralTensor(rawTypedTensor=tt.RawTypedTensor(dataType=0, content=b"\x00" * 16, shape=[4])),
             8: tt.GeneralTensor(int64Tensor=tt.Int64Tensor(longs=[1, 2], shape=[2]))},
    sparseTensors={9: tt.SparseTensor(cooSparseTensor=tt.COOSparseTensor(
        denseShape=[4], indices=tt.Int64Tensor(longs=[1]),
        values=tt.GeneralTensor(stringTensor=tt.StringTensor(strings=["z"]))))}))
DATARECORDS = RECORDS.to_list() + [RICH, encode_batch_prediction_response(RECORDS)]
TFRECORDS = [frame_tfrecords(RECORDS).tobytes(), frame_tfrecords(RECORDS.take(np.array([1]))).tobytes()]
BLOCKS = [encode_block(RECORDS.to_list()) + encode_block([RICH]), encode_block([RICH])]

# Values that break naive length handling: 0, small, sign boundaries, 2^31-1, 2^32-1, 2^63-1 ...
_EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
             (1 << 40), (1 << 63) - 1, (1 << 64) - 1]


def mutate(rng: random.Random, seeds, data: bytes) -> bytes:
    """One mutation of ``data`` (a valid input), chosen at random."""
    op = rng.randrange(9)
    buf = bytearray(data)
    if op == 0 and buf:                                    # flip 1-4 bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif op == 1 and buf:                                  # overwrite 1-4 bytes
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif op == 2 and len(buf) >= 8:                        # a length field with an extreme value
        value = rng.choice(_EXTREMES)
        size, fmt = rng.choice([(2, ">H"), (4, ">I"), (4, "<I"), (8, "<Q"), (8, ">Q")])
        i = rng.randrange(len(buf) - size + 1)
        buf[i:i + size] = struct.pack(fmt, value & ((1 << (8 * size)) - 1))
    elif op == 3:                                          # truncate
        del buf[rng.randrange(len(buf) + 1):]
    elif op == 4:                                          # insert random bytes
        i = rng.randrange(len(buf) + 1)
        buf[i:i] = rng.randbytes(rng.randint(1, 16))
    elif op == 5 and buf:                                  # delete a span
        i = rng.randrange(len(buf))
        del buf[i:i + rng.randint(1, 16)]
    elif op == 6:                                          # splice with another valid input
        other = rng.choice(seeds)
        buf = buf[:rng.randrange(len(buf) + 1)] + bytearray(other[rng.randrange(len(other) + 1):])
    elif op == 7 and buf:                                  # duplicate a span
        i = rng.randrange(len(buf))
        buf[i:i] = buf[i:i + rng.randint(1, 32)]
    else:                                                  # random bytes
        return rng.randbytes(rng.randint(0, 300))
    return bytes(buf)


def gzipped(data: bytes, rng: random.Random) -> bytes:
    """A gzip stream of ``data``, sometimes damaged after compression."""
    packed = gzip.compress(data, mtime=0)
    if rng.random() < 0.5:
        packed = mutate(rng, [packed], packed)
    return packed


# -- the readers, each returning normally or raising only its documented error ---------------------

def read_datarecord(data: bytes) -> None:
    for decoder in (decode_data_record, decode_batch_prediction_response):
        try:
            decoder(data, path="mem", offset=0)
        except RecordFormatError as err:
            assert err.path == "mem" and err.offset is not None and 0 <= err.offset <= len(data)
    # Alone and second in a batch: the error names the path, and an offset inside this record.
    lead = DATARECORDS[0]
    for batch, start in (([data], 0), ([lead, data], len(lead))):
        try:
            decode_embeddings(batch, KEY_ID, EMB_ID, path="mem")
        except RecordFormatError as err:
            assert err.path == "mem" and err.offset is not None and start <= err.offset <= start + len(data), \
                (err.path, err.offset, start)
            assert err.reason.startswith(f"record {len(batch) - 1}:"), err.reason


def _stream_reader(iterate):
    def read(data: bytes, compressed: bool = False) -> None:
        fileobj = gzip.GzipFile(fileobj=io.BytesIO(data)) if compressed else io.BytesIO(data)
        try:
            for _ in iterate(fileobj, path="fuzz"):
                pass
        except RecordFormatError as err:
            assert err.path == "fuzz" and err.offset is not None and err.offset >= 0
            if not compressed:
                assert err.offset <= len(data)
    return read


read_tfrecord = _stream_reader(iter_tfrecords)
read_block = _stream_reader(iter_block_records)


def cases(name: str, count: int, rng: random.Random):
    """(reader, input) pairs: ``count`` mutated or random inputs for the reader ``name``."""
    if name == "datarecord":
        return ((read_datarecord, mutate(rng, DATARECORDS, rng.choice(DATARECORDS))) for _ in range(count))
    seeds = TFRECORDS if name.startswith("tfrecord") else BLOCKS
    reader = read_tfrecord if name.startswith("tfrecord") else read_block
    if name.endswith(".gz"):
        return ((lambda data: reader(data, compressed=True), gzipped(mutate(rng, seeds, rng.choice(seeds)), rng))
                for _ in range(count))
    return ((reader, mutate(rng, seeds, rng.choice(seeds))) for _ in range(count))


def run_case(name, index, reader, data, count=True):
    """Run one input through a reader; returns the seconds it took."""
    RUN[0] += count
    start = time.perf_counter()
    try:
        reader(data)
    except Exception as err:  # anything but the documented error is a finding
        pytest.fail(f"{name} case {index} (seed {SEED}) raised {type(err).__name__}: {err}\ninput: {data.hex()}")
    return time.perf_counter() - start


@pytest.mark.parametrize("name", sorted(BULK))
def test_bulk_mutations_raise_only_the_documented_error(name):
    rng = random.Random(f"{SEED}-{name}")
    rss_before = psutil.Process().memory_info().rss
    slowest = 0.0
    for index, (reader, data) in enumerate(cases(name, BULK[name], rng)):
        slowest = max(slowest, run_case(name, index, reader, data))
    rss_growth = psutil.Process().memory_info().rss - rss_before
    FUZZ.append(f"{name}: {BULK[name]} inputs, slowest {slowest * 1000:.1f} ms, RSS growth {rss_growth >> 20} MiB")
    assert slowest < MAX_SECONDS_PER_INPUT
    assert rss_growth < MAX_RSS_GROWTH


def _length_attacks(seeds, rng, count):
    """Valid inputs with one 2/4/8-byte field set to an extreme value."""
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        size, fmt = rng.choice([(4, ">I"), (4, "<I"), (8, "<Q"), (8, ">Q")])
        i = rng.randrange(len(data) - size + 1)
        data[i:i + size] = struct.pack(fmt, rng.choice(_EXTREMES) & ((1 << (8 * size)) - 1))
        out.append(bytes(data))
    return out


def test_memory_per_input_is_bounded_whatever_a_length_field_claims():
    rng = random.Random(f"{SEED}-memory")
    plan = [("datarecord", read_datarecord, DATARECORDS), ("tfrecord", read_tfrecord, TFRECORDS),
            ("block", read_block, BLOCKS)]
    total, worst = 0, 0
    tracemalloc.start()
    try:
        for name, reader, seeds in plan:
            for index, data in enumerate(_length_attacks(seeds, rng, 1000)):
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                run_case(f"{name}/memory", index, reader, data)
                peak = tracemalloc.get_traced_memory()[1] - base
                worst = max(worst, peak)
                assert peak < MAX_TRACED_PEAK, (name, index, peak, data.hex())
                total += 1
    finally:
        tracemalloc.stop()
    FUZZ.append(f"length-field attacks under tracemalloc: {total} inputs, worst peak {worst >> 10} KiB")


# -- hypothesis: shrinking-friendly cases ------------------------------------------------------------

HYPO = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])
_EDITS = st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=6)


@HYPO
@given(st.sampled_from(DATARECORDS + TFRECORDS + BLOCKS), _EDITS, st.integers(0, 400))
def test_hypothesis_edited_inputs_every_reader(seed, edits, cut):
    data = bytearray(seed)
    for where, value in edits:
        data[where % len(data)] = value
    data = bytes(data[:cut] if cut < len(data) else data)
    for i, reader in enumerate((read_datarecord, read_tfrecord, read_block)):
        run_case("hypothesis", 0, reader, data, count=i == 0)


@HYPO
@given(st.binary(max_size=400))
def test_hypothesis_random_bytes_every_reader(data):
    for i, reader in enumerate((read_datarecord, read_tfrecord, read_block)):
        run_case("hypothesis", 0, reader, data, count=i == 0)
    run_case("hypothesis", 0, lambda d: read_tfrecord(d, compressed=True), gzip.compress(data, mtime=0)[:len(data)])


# -- verify on real exports with a mutated shard or manifest ----------------------------------------

@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-verify")
    write_users(str(root / "in"), 24, files=1)
    made = []
    for fmt, compression in (("tfrecord", "gzip"), ("block", "none"), ("parquet", "none")):
        out = str(root / f"{fmt}-{compression}")
        manifest = run_export(preflight(tiny_config(str(root / "in" / "*.parquet"), tiny_model(), out, num_shards=1,
                                          fmt=fmt, compression=compression)))
        assert verify_export(out).ok
        made.append((out, manifest["shards"][0]["file"]))
    return made


def test_verify_reports_every_mutated_shard_and_never_raises(exports):
    rng = random.Random(f"{SEED}-verify")
    slowest, flagged, count = 0.0, 0, 0
    for out, shard in exports:
        path = os.path.join(out, shard)
        with open(path, "rb") as handle:
            original = handle.read()
        manifest_path = os.path.join(out, "_MANIFEST.json")
        with open(manifest_path, "rb") as handle:
            manifest = handle.read()
        try:
            for index in range(VERIFY_CASES // len(exports)):
                target, good = (manifest_path, manifest) if index % 10 == 9 else (path, original)
                data = mutate(rng, [good], good)
                with open(target, "wb") as handle:
                    handle.write(data)
                start = time.perf_counter()
                RUN[0] += 1
                try:
                    report = verify_export(out)
                except Exception as err:
                    pytest.fail(f"verify case {index} on {target} raised {type(err).__name__}: {err}\n"
                                f"input: {data.hex()}")
                slowest = max(slowest, time.perf_counter() - start)
                if target == path and data != original:
                    assert not report.ok, (index, data.hex())        # every change to a shard is caught
                    flagged += 1
                count += 1
                with open(target, "wb") as handle:
                    handle.write(good)
        finally:
            with open(path, "wb") as handle:
                handle.write(original)
            with open(manifest_path, "wb") as handle:
                handle.write(manifest)
    assert verify_export(exports[0][0]).ok
    FUZZ.append(f"verify: {count} mutated exports ({flagged} changed shards, all reported), "
                f"slowest {slowest * 1000:.1f} ms")
    assert slowest < MAX_SECONDS_PER_INPUT



# -- the native DataRecord column decoder (twml.decode_columns via records_to_table) -----------------

from transforms.inputs.datarecord import (CONTINUOUS, DISCRETE, SPARSE_BINARY,  # noqa: E402
                                          DataRecordSource, FeatureColumn, records_to_table,
                                          records_to_table_slow)
from twml import decode_columns  # noqa: E402

NATIVE_CASES = 100_000
NATIVE_BATCH = 500
# Seeds the kernel reads rather than flags (no non-empty tensors), plus the ones above.
PLAIN = serialize(data_thrift.DataRecord(
    binaryFeatures={1, 2}, continuousFeatures={3: 1.5, 11: float("nan"), 12: -0.0}, discreteFeatures={KEY_ID: 9, 5: -2},
    stringFeatures={4: "s"}, sparseBinaryFeatures={5: {"x", "yz", "é"}, 13: {""}},
    sparseContinuousFeatures={6: {"y": 2.0}}, blobFeatures={7: b"b"}, tensors={}))
NATIVE_SEEDS = [PLAIN, serialize(data_thrift.DataRecord(continuousFeatures={i: i / 3 for i in range(40)},
                                                        discreteFeatures={KEY_ID: -1})), RICH] + RECORDS.to_list()
NATIVE_SOURCE = DataRecordSource("tfrecord", "key", KEY_ID, (
    FeatureColumn("dense", CONTINUOUS, (3, 11, 12, 20), default=0.0),
    FeatureColumn("score", CONTINUOUS, (3,), scalar=True),
    FeatureColumn("d", DISCRETE, (5,), scalar=True),
    FeatureColumn("ids", SPARSE_BINARY, (5, 13)),
    FeatureColumn("more", SPARSE_BINARY, (9,))))


def _cells(table):
    """Table cells with floats as their bits (NaN equal to itself)."""
    def canon(value):
        if isinstance(value, float):
            return struct.pack("<d", value)
        return tuple(map(canon, value)) if isinstance(value, list) else value
    return {name: [canon(v) for v in table.column(name).to_pylist()] for name in table.column_names}


def native_matches_or_flags(records, first_index=0):
    """records_to_table (kernel) == records_to_table_slow on ``records``; every record the kernel
    did not flag is one the validator accepts. Returns (records the kernel read itself, valid records)."""
    buf, offsets = decode_columns.pack_records(records)
    unflagged = np.flatnonzero(~decode_columns.extract_columns(buf, offsets, [3, 11, 12, 20], [KEY_ID, 5],
                                                               [5, 9, 13]).flagged)
    for i in unflagged:
        decode_data_record(records[i])          # raises (a finding) if the kernel accepted a bad record
    fast, fast_bad = records_to_table(records, NATIVE_SOURCE, "fuzz", first_index)
    slow, slow_bad = records_to_table_slow(records, NATIVE_SOURCE, "fuzz", first_index)
    assert fast.schema == slow.schema and fast_bad == slow_bad
    assert _cells(fast) == _cells(slow)
    return len(unflagged), slow.num_rows


def test_native_column_decoder_matches_or_flags_every_mutated_record():
    assert decode_columns.native_ready()
    rng = random.Random(f"{SEED}-native")
    slowest, read_natively, valid = 0.0, 0, 0
    rss_before = psutil.Process().memory_info().rss
    for first in range(0, NATIVE_CASES, NATIVE_BATCH):
        records = [mutate(rng, NATIVE_SEEDS, rng.choice(NATIVE_SEEDS)) for _ in range(NATIVE_BATCH)]
        RUN[0] += len(records)
        start = time.perf_counter()
        try:
            native, ok = native_matches_or_flags(records, first)
            read_natively, valid = read_natively + native, valid + ok
        except Exception as err:
            pytest.fail(f"native decoder, batch at case {first} (seed {SEED}): {type(err).__name__}: {err}\n"
                        f"inputs: {[r.hex() for r in records]}")
        slowest = max(slowest, time.perf_counter() - start)
    rss_growth = psutil.Process().memory_info().rss - rss_before
    FUZZ.append(f"native DataRecord columns: {NATIVE_CASES} inputs, {valid} of them valid records, "
                f"{read_natively} read by the kernel (the rest flagged and decoded one by one), slowest batch of "
                f"{NATIVE_BATCH} {slowest * 1000:.1f} ms, RSS growth {rss_growth >> 20} MiB")
    assert read_natively > valid // 2      # the kernel, not only the fallback, was exercised
    assert slowest < MAX_SECONDS_PER_INPUT * 5
    assert rss_growth < MAX_RSS_GROWTH


@HYPO
@given(st.sampled_from(NATIVE_SEEDS), _EDITS, st.integers(0, 400))
def test_hypothesis_native_column_decoder(seed, edits, cut):
    data = bytearray(seed)
    for where, value in edits:
        data[where % len(data)] = value
    RUN[0] += 1
    native_matches_or_flags([bytes(data[:cut] if cut < len(data) else data), bytes(data)])


@HYPO
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_hypothesis_native_column_decoder_random_bytes(records):
    RUN[0] += len(records)
    native_matches_or_flags(records)
