"""fill_rows (twml.row_fill): the native one-pass fill against numpy's, and the crc footers
against google_crc32c, on both backends."""
import os
import subprocess
import sys

import google_crc32c
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twml import row_fill
from twml.encode import encode_data_records, encode_fixed_rows
from twml.io.tfrecord import encode_tfrecords, frame_tfrecords
from twml.row_fill import fill_rows, fill_rows_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, "little")


def _by_hand(template, blocks, batch, footer=None) -> np.ndarray:
    """Row by row in Python: the independent reference."""
    rows = []
    for i in range(batch):
        row = bytearray(template.tobytes())
        for col, block in blocks:
            row[col:col + block.shape[1]] = block[i].tobytes()
        if footer is not None:
            start, length = footer
            row[start + length:start + length + 4] = _masked_crc(bytes(row[start:start + length]))
        rows.append(bytes(row))
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(batch, len(template))


def test_backend_is_numba():
    fill_rows(np.zeros(3, np.uint8), [], 1)   # runs the first-call check
    assert row_fill.BACKEND == "numba"


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(0, 41), length=st.integers(1, 90),
       nblocks=st.integers(0, 4), framed=st.booleans())
def test_rows_equal_the_row_by_row_fill(seed, batch, length, nblocks, framed):
    rng = np.random.default_rng(seed)
    template = rng.integers(0, 256, size=length + 4, dtype=np.uint8)
    blocks = []
    for _ in range(nblocks):   # anywhere in the first `length` bytes, overlaps allowed (later wins)
        col = int(rng.integers(0, length))
        width = int(rng.integers(0, length - col + 1))
        blocks.append((col, rng.integers(0, 256, size=(batch, width), dtype=np.uint8)))
    start = int(rng.integers(0, length + 1))
    footer = (start, length - start) if framed else None   # the footer: the template's last 4 bytes
    expected = _by_hand(template, blocks, batch, footer)
    got = fill_rows(template, blocks, batch, footer)
    assert got.shape == (batch, length + 4) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(fill_rows_reference(template, blocks, batch, footer), expected)


def test_blocks_in_any_memory_layout_are_read_as_given():
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 256, size=(50, 30), dtype=np.uint8)
    blocks = [(0, wide[:, 5:13]), (10, wide[::-1, :4]), (20, np.asfortranarray(wide[:, 20:30]))]
    template = np.arange(34, dtype=np.uint8)
    np.testing.assert_array_equal(fill_rows(template, blocks, 50, (0, 30)),
                                  _by_hand(template, blocks, 50, (0, 30)))


@pytest.mark.parametrize("dim", [1, 128, 257])
def test_encoded_and_framed_records_are_the_same_bytes_as_framing_after_encoding(dim):
    rng = np.random.default_rng(dim)
    keys = rng.integers(-2**63, 2**63 - 1, size=300, dtype=np.int64)
    tensors = [(7, rng.normal(size=(300, dim)).astype(np.float32)), (9, rng.integers(0, 5, size=(300, 2)))]
    expected = frame_tfrecords(encode_data_records(keys, 1, tensors))
    np.testing.assert_array_equal(encode_tfrecords(keys, 1, tensors), expected)
    rows = encode_fixed_rows(keys, 1, tensors, head=12, tail=4, crc_footer=True)
    np.testing.assert_array_equal(rows[:, 12:-4], np.asarray(expected).reshape(300, -1)[:, 12:-4])
    np.testing.assert_array_equal(rows[:, -4:], np.asarray(expected).reshape(300, -1)[:, -4:])


def test_a_crc_footer_needs_a_four_byte_tail():
    with pytest.raises(ValueError, match="tail of at least 4 bytes"):
        encode_fixed_rows(np.arange(3), 1, [(2, np.zeros((3, 2), np.float32))], tail=3, crc_footer=True)


@pytest.mark.parametrize("blocks, footer, message", [
    ([(0, np.zeros((2, 3), np.int32))], None, "must be uint8"),
    ([(0, np.zeros((3, 3), np.uint8))], None, "must be uint8"),
    ([(8, np.zeros((2, 3), np.uint8))], None, "does not fit"),
    ([(-1, np.zeros((2, 3), np.uint8))], None, "does not fit"),
    ([], (2, 6), "footer"),
    ([(4, np.zeros((2, 3), np.uint8))], (0, 4), "covers the footer"),
])
def test_blocks_and_footers_that_do_not_fit_are_refused(blocks, footer, message):
    with pytest.raises(ValueError, match=message):
        fill_rows(np.zeros(10, np.uint8), blocks, 2, footer)


def test_falls_back_to_numpy_when_numba_is_missing():
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np\n"
            "from twml import row_fill as r\n"
            "out = r.fill_rows(np.arange(7, dtype=np.uint8), [(1, np.full((2, 2), 9, np.uint8))], 2, (0, 3))\n"
            "print(r.BACKEND, out.tobytes().hex())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = _by_hand(np.arange(7, dtype=np.uint8), [(1, np.full((2, 2), 9, np.uint8))], 2, (0, 3))
    assert done.stdout.split() == ["numpy", expected.tobytes().hex()]


def test_a_kernel_that_fails_its_first_call_check_is_dropped_with_a_warning(monkeypatch):
    def wrong(out, template, cols, widths, sources, batch):
        out[:] = 1

    monkeypatch.setattr(row_fill, "_KERNEL", wrong)
    monkeypatch.setattr(row_fill, "_FRAMED_KERNEL", row_fill._FRAMED_KERNEL)  # restored after
    monkeypatch.setattr(row_fill, "_NATIVE", row_fill._NATIVE.fresh())  # the check runs again
    monkeypatch.setattr(row_fill, "BACKEND", "numba")
    template = np.arange(20, dtype=np.uint8)
    blocks = [(2, np.random.default_rng(1).integers(0, 256, (7, 5), dtype=np.uint8))]
    with pytest.warns(RuntimeWarning, match="native kernel unusable"):
        got = fill_rows(template, blocks, 7, (0, 16))
    np.testing.assert_array_equal(got, _by_hand(template, blocks, 7, (0, 16)))
    assert row_fill.BACKEND == "numpy" and row_fill._KERNEL is None and row_fill._FRAMED_KERNEL is None
