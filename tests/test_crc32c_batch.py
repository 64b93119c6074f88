"""crc32c_rows against google_crc32c, bit for bit, on both backends."""
import os
import subprocess
import sys

import google_crc32c
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twml.io import crc32c_batch
from twml.io.crc32c_batch import (crc32c_rows, crc32c_rows_reference, frame_records, mask_crc32c,
                                  masked_crc32c_into_footer)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _expected(rows: np.ndarray) -> np.ndarray:
    return np.array([google_crc32c.value(bytes(row)) for row in rows], dtype=np.uint32)


def _native_expected() -> bool:
    try:
        import llvmlite.binding as llvm
        import numba  # noqa: F401
    except ImportError:
        return False
    return llvm.get_host_cpu_features().get("sse4.2", False)


def test_backend_is_native_where_numba_and_sse42_are():
    crc32c_rows(np.zeros((1, 1), np.uint8))   # runs the first-call check
    assert crc32c_batch.BACKEND == ("numba-sse4.2" if _native_expected() else "google-crc32c")


def test_known_vector():
    # The CRC-32C check value (RFC 3720 appendix B.4 / the Castagnoli catalogue).
    rows = np.frombuffer(b"123456789", dtype=np.uint8).reshape(1, 9)
    assert crc32c_rows(rows).tolist() == [0xE3069283]


def test_every_length_up_to_4096():
    # Five rows per length: one 4-row interleaved group plus the single-row tail loop.
    data = np.random.default_rng(1).integers(0, 256, size=5 * 4096, dtype=np.uint8)
    for length in range(4097):
        rows = data[:5 * length].reshape(5, length)
        got = crc32c_rows(rows)
        assert got.dtype == np.uint32 and got.shape == (5,)
        np.testing.assert_array_equal(got, _expected(rows), err_msg=f"length {length}")


@pytest.mark.parametrize("batch", [0, 1, 2, 3, 4, 5, 7, 8, 9, 4096])
@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 590])
def test_batch_sizes(batch, length):
    rows = np.random.default_rng(batch * 1000 + length).integers(0, 256, (batch, length), np.uint8)
    np.testing.assert_array_equal(crc32c_rows(rows), _expected(rows))


def test_rows_of_a_wider_framed_array_are_read_in_place():
    framed = np.random.default_rng(2).integers(0, 256, (101, 606), dtype=np.uint8)
    rows = framed[:, 12:602]
    assert not rows.flags.c_contiguous
    np.testing.assert_array_equal(crc32c_rows(rows), _expected(rows))


@pytest.mark.parametrize("make", [
    lambda a: np.asfortranarray(a),
    lambda a: a[::-1],
    lambda a: a[:, ::2],
    lambda a: a[::3],
])
def test_other_layouts(make):
    rows = make(np.random.default_rng(3).integers(0, 256, (33, 50), dtype=np.uint8))
    np.testing.assert_array_equal(crc32c_rows(rows), _expected(rows))


def test_read_only_input():
    data = bytes(range(256)) * 10
    rows = np.frombuffer(data, dtype=np.uint8).reshape(10, 256)
    assert not rows.flags.writeable
    np.testing.assert_array_equal(crc32c_rows(rows), _expected(rows))


def test_reference_matches_too():
    rows = np.random.default_rng(4).integers(0, 256, (9, 77), dtype=np.uint8)
    np.testing.assert_array_equal(crc32c_rows_reference(rows), _expected(rows))


@pytest.mark.parametrize("bad", [np.zeros((3, 4), np.int8), np.zeros(12, np.uint8),
                                 np.zeros((2, 3, 4), np.uint8), np.zeros((3, 4), np.float32)])
def test_rejects_what_is_not_a_2d_uint8_array(bad):
    with pytest.raises(ValueError, match=r"2-D uint8 array \[B, L\]"):
        crc32c_rows(bad)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(0, 300), st.integers(0, 9), st.integers(0, 2**32 - 1))
def test_random_shapes_and_offsets(batch, length, pad, seed):
    wide = np.random.default_rng(seed).integers(0, 256, (batch, length + pad), dtype=np.uint8)
    rows = wide[:, pad // 2:pad // 2 + length]
    np.testing.assert_array_equal(crc32c_rows(rows), _expected(rows))


def test_falls_back_when_numba_is_missing():
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np\n"
            "from twml.io import crc32c_batch as c\n"
            "r = np.frombuffer(b'123456789', np.uint8).reshape(1, 9)\n"
            "print(c.BACKEND, hex(int(c.crc32c_rows(r)[0])))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["google-crc32c", "0xe3069283"]


def test_a_kernel_that_fails_its_first_call_check_is_dropped_with_a_warning(monkeypatch):
    def wrong(src, stride, length, crcs):
        crcs[:] = 1

    monkeypatch.setattr(crc32c_batch, "_KERNEL", wrong)
    monkeypatch.setattr(crc32c_batch, "_FOOTER_KERNEL", crc32c_batch._FOOTER_KERNEL)  # restored after
    monkeypatch.setattr(crc32c_batch, "_FRAME_KERNEL", crc32c_batch._FRAME_KERNEL)
    monkeypatch.setattr(crc32c_batch, "_NATIVE", crc32c_batch._NATIVE.fresh())  # the check runs again
    monkeypatch.setattr(crc32c_batch, "BACKEND", "numba-sse4.2")
    rows = np.random.default_rng(5).integers(0, 256, (6, 40), dtype=np.uint8)
    with pytest.warns(RuntimeWarning, match="native kernel unusable"):
        got = crc32c_rows(rows)
    np.testing.assert_array_equal(got, _expected(rows))
    assert crc32c_batch.BACKEND == "google-crc32c" and crc32c_batch._KERNEL is None


# -- masked_crc32c_into_footer: TFRecord's data crc written in place ------------------------------

def _masked(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _expected_framed(framed: np.ndarray, start: int, length: int) -> np.ndarray:
    """``framed`` with each row's footer set one google_crc32c call at a time."""
    out = framed.copy()
    for row in out:
        row[start + length:start + length + 4] = np.frombuffer(
            _masked(bytes(row[start:start + length])).to_bytes(4, "little"), np.uint8)
    return out


def test_mask_matches_the_scalar_formula():
    crcs = np.array([0, 1, 0x7FFF, 0x8000, 0xE3069283, 0xFFFFFFFF], dtype=np.uint32)
    want = [(((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF for c in crcs.tolist()]
    assert mask_crc32c(crcs).tolist() == want and mask_crc32c(crcs).dtype == np.uint32


def test_footer_every_length_up_to_700():
    data = np.random.default_rng(6).integers(0, 256, size=5 * 720, dtype=np.uint8)
    for length in range(701):
        framed = data[:5 * (length + 16)].reshape(5, length + 16).copy()
        want = _expected_framed(framed, 12, length)
        masked_crc32c_into_footer(framed, 12, length)
        np.testing.assert_array_equal(framed, want, err_msg=f"length {length}")


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 40), st.integers(0, 300), st.integers(0, 13), st.integers(0, 9),
       st.integers(0, 2**32 - 1))
def test_footer_random_shapes_only_touches_the_footer(batch, length, start, extra, seed):
    framed = np.random.default_rng(seed).integers(0, 256, (batch, start + length + 4 + extra), np.uint8)
    want = _expected_framed(framed, start, length)   # every byte but the footers unchanged
    masked_crc32c_into_footer(framed, start, length)
    np.testing.assert_array_equal(framed, want)


def test_footer_on_rows_of_a_wider_array():
    wide = np.random.default_rng(7).integers(0, 256, (21, 700), dtype=np.uint8)
    framed = wide[:, 50:50 + 606]
    want_wide = wide.copy()
    want_wide[:, 50:50 + 606] = _expected_framed(framed, 12, 590)
    masked_crc32c_into_footer(framed, 12, 590)
    np.testing.assert_array_equal(wide, want_wide)


def test_footer_known_vector():
    framed = np.zeros((2, 13), np.uint8)
    framed[:, :9] = np.frombuffer(b"123456789", np.uint8)
    masked_crc32c_into_footer(framed, 0, 9)
    crc = 0xE3069283
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert bytes(framed[1, 9:]) == masked.to_bytes(4, "little") and framed[0, 12] == framed[1, 12]


@pytest.mark.parametrize("bad,message", [
    (np.zeros((3, 20), np.int8), r"2-D uint8 array \[B, W\]"),
    (np.zeros(20, np.uint8), r"2-D uint8 array \[B, W\]"),
    (np.zeros((3, 15), np.uint8), "at least 16 bytes, rows have 15"),
    (np.frombuffer(bytes(60), np.uint8).reshape(3, 20), "read-only"),
    (np.asfortranarray(np.zeros((3, 20), np.uint8)), "each contiguous and in order"),
    (np.zeros((3, 40), np.uint8)[:, ::2], "each contiguous and in order"),
])
def test_footer_rejects_what_it_cannot_write_in_place(bad, message):
    with pytest.raises(ValueError, match=message):
        masked_crc32c_into_footer(bad, 2, 10)


def test_footer_falls_back_when_numba_is_missing():
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np\n"
            "from twml.io import crc32c_batch as c\n"
            "f = np.zeros((3, 13), np.uint8); f[:, :9] = np.frombuffer(b'123456789', np.uint8)\n"
            "c.masked_crc32c_into_footer(f, 0, 9)\n"
            "print(c.BACKEND, f[:, 9:].tobytes().hex())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    crc = 0xE3069283
    masked = ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, "little")
    assert done.stdout.split() == ["google-crc32c", (masked * 3).hex()]


def test_a_footer_kernel_that_fails_its_first_call_check_is_dropped_with_a_warning(monkeypatch):
    def wrong(buf, batch, stride, length):
        buf[:] = 0

    monkeypatch.setattr(crc32c_batch, "_KERNEL", crc32c_batch._KERNEL)
    monkeypatch.setattr(crc32c_batch, "_FOOTER_KERNEL", wrong)
    monkeypatch.setattr(crc32c_batch, "_FRAME_KERNEL", crc32c_batch._FRAME_KERNEL)
    monkeypatch.setattr(crc32c_batch, "_NATIVE", crc32c_batch._NATIVE.fresh())  # the check runs again
    monkeypatch.setattr(crc32c_batch, "BACKEND", "numba-sse4.2")
    framed = np.random.default_rng(8).integers(0, 256, (6, 60), dtype=np.uint8)
    want = _expected_framed(framed, 12, 44)
    with pytest.warns(RuntimeWarning, match="footer results differ"):
        masked_crc32c_into_footer(framed, 12, 44)
    np.testing.assert_array_equal(framed, want)
    assert crc32c_batch.BACKEND == "google-crc32c"
    assert crc32c_batch._KERNEL is None and crc32c_batch._FOOTER_KERNEL is None


# -- frame_records: TFRecord frames of records of differing lengths -------------------------------

def _expected_frames(records) -> bytes:
    """Each record framed with struct-free arithmetic and one google_crc32c call per piece."""
    out = b""
    for record in records:
        length = len(record).to_bytes(8, "little")
        out += length + _masked(length).to_bytes(4, "little") + record + _masked(record).to_bytes(4, "little")
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=70), max_size=20), st.binary(max_size=5))
def test_frame_records_matches_google_crc32c(records, lead):
    data = np.frombuffer(lead + b"".join(records), np.uint8)
    offsets = np.cumsum([len(lead)] + [len(r) for r in records]).astype(np.int64)
    assert frame_records(data, offsets).tobytes() == _expected_frames(records)


def test_frame_records_rejects_bad_offsets():
    with pytest.raises(ValueError, match="non-decreasing offsets"):
        frame_records(np.zeros(4, np.uint8), np.array([0, 3, 2]))
    with pytest.raises(ValueError, match="non-decreasing offsets"):
        frame_records(np.zeros(4, np.uint8), np.array([0, 5]))


def test_frame_records_falls_back_when_numba_is_missing():
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np\n"
            "from twml.io import crc32c_batch as c\n"
            "framed = c.frame_records(np.frombuffer(b'123456789', np.uint8), np.array([0, 4, 9]))\n"
            "print(c.BACKEND, framed.tobytes().hex())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["google-crc32c", _expected_frames([b"1234", b"56789"]).hex()]


def test_a_frame_kernel_that_fails_its_first_call_check_is_dropped_with_a_warning(monkeypatch):
    def wrong(src, offsets, out):
        out[:] = 0

    monkeypatch.setattr(crc32c_batch, "_KERNEL", crc32c_batch._KERNEL)
    monkeypatch.setattr(crc32c_batch, "_FOOTER_KERNEL", crc32c_batch._FOOTER_KERNEL)
    monkeypatch.setattr(crc32c_batch, "_FRAME_KERNEL", wrong)
    monkeypatch.setattr(crc32c_batch, "_NATIVE", crc32c_batch._NATIVE.fresh())  # the check runs again
    monkeypatch.setattr(crc32c_batch, "BACKEND", "numba-sse4.2")
    with pytest.warns(RuntimeWarning, match="framed records differ"):
        got = frame_records(np.frombuffer(b"abcdef", np.uint8), np.array([0, 2, 6]))
    assert got.tobytes() == _expected_frames([b"ab", b"cdef"])
    assert crc32c_batch.BACKEND == "google-crc32c" and crc32c_batch._FRAME_KERNEL is None
