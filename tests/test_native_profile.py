"""benchmarks.native_profile: perf's samples counted by run and figure, and their marginal per row.

The profile itself needs ``perf`` and minutes of CPU; these test what turns its output into
figures, on lines in the form ``perf script -F comm,pid,tid,time,ip,sym,dso`` prints them.
"""
import collections

import pytest

from benchmarks.native_profile import Sample, Span, count_samples, marginal, parse_samples, table

PERF_LINES = """\
          python 18374/18374 13852.110403:  ffffffff821eb5f6 copy_mc_enhanced_fast_string ([kernel.kallsyms])
      tf_Compute 18374/18386 13855.644951:      7f1570e6c61b std::_Function_handler<void (long, long), Eigen::internal::TensorExecutor<Eigen::TensorAssignOp<long> >::run(Eigen::ThreadPoolDevice const&)::{lambda(long, long)#1}>::_M_invoke (/venv/lib/python3.11/site-packages/tensorflow/libtensorflow_cc.so.2)
      tf_Compute 18374/18385 13855.709443:      7f1525140ed2 [unknown] (/tmp/perf-18374.map)
          python 18374/18374 13852.111898:      7f15a268fc26 siphash13+0x16 (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)
  Thread pool 1 18374/18391 13852.5:      7f15a268fc26 arrow::internal::FnOnce (/venv/libarrow.so.2500)
not a sample line
"""


def test_parse_samples_reads_kind_time_dso_and_symbol():
    samples = list(parse_samples(PERF_LINES.splitlines()))
    assert samples == [
        Sample("main", 13852.110403, "[kernel.kallsyms]", "copy_mc_enhanced_fast_string"),
        Sample("tf", 13855.644951, "libtensorflow_cc.so.2",
               "std::_Function_handler<void (long, long), Eigen::internal::TensorExecutor<Eigen::TensorAssignOp<long> >"
               "::run(Eigen::ThreadPoolDevice const&)::{lambda(long, long)#1}>::_M_invoke"),
        Sample("tf", 13855.709443, "perf-18374.map", "[unknown]"),
        Sample("main", 13852.111898, "libpython3.11.so.1.0", "siphash13"),   # the offset dropped
        Sample("other", 13852.5, "libarrow.so.2500", "arrow::internal::FnOnce"),
    ]


def _spans_and_samples(per_run):
    """Spans one second apart and, in each, the samples ``per_run[(path, size, round)]`` lists
    as (kind, dso, symbol, count); plus samples between the runs, which must not count."""
    spans, samples = [], []
    for i, ((path, size, rnd), items) in enumerate(sorted(per_run.items())):
        start = 100.0 + 2 * i
        spans.append(Span(path, size, rnd, start, start + 1.0))
        for kind, dso, symbol, count in items:
            samples += [Sample(kind, start + 0.5, dso, symbol)] * count
        samples.append(Sample("main", start + 1.5, "libc.so.6", "between_runs"))
    return spans, samples


def test_marginal_is_the_median_over_rounds_of_2n_minus_n_per_row():
    n, hz = 1000, 1000   # a sample is 1 ms of CPU, 1 us a row at N = 1000
    per_run = {}
    for rnd, extra in enumerate((3, 5, 4)):   # the job's main thread: 2N - N = 10 + extra samples
        per_run[("job", n, rnd)] = [("main", "libc.so.6", "memmove", 10), ("tf", "x.map", "[unknown]", 50)]
        per_run[("job", 2 * n, rnd)] = [("main", "libc.so.6", "memmove", 20 + extra),
                                        ("tf", "x.map", "[unknown]", 100)]
        per_run[("floor", n, rnd)] = [("tf", "x.map", "[unknown]", 49)]
        per_run[("floor", 2 * n, rnd)] = [("tf", "x.map", "[unknown]", 97)]
    spans, samples = _spans_and_samples(per_run)
    counts = count_samples(samples, spans, "symbol")
    assert sum(sum(c.values()) for c in counts.values()) == len(samples) - len(spans)   # between runs: out
    result = marginal(counts, hz)
    assert (result["rows"], result["rounds"]) == (n, 3)
    memmove = ("main", "libc.so.6", "memmove")
    assert result["job"][memmove]["median"] == pytest.approx(14.0)   # (10 + 4) ms / 1000 rows
    assert result["floor"][memmove]["median"] == 0.0
    assert result["job_minus_floor"][("tf", "x.map", "[unknown]")]["median"] == pytest.approx(2.0)
    by_kind = marginal(count_samples(samples, spans, "kind"), hz)
    assert by_kind["job"][("main",)]["median"] == pytest.approx(14.0)
    text = table(result, top=1)
    assert "memmove" in text and "[unknown]" not in text   # the largest difference first, one line


def test_marginal_needs_runs_of_n_and_2n_rows():
    spans = [Span("job", 1000, 0, 0.0, 1.0), Span("job", 3000, 0, 2.0, 3.0)]
    with pytest.raises(ValueError, match="N and 2N"):
        marginal({span: collections.Counter() for span in spans}, 1000)
