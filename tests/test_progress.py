"""Live progress of local runs (side-channel files, rich bar) and the closing summary."""
import io
import os
import time

import apache_beam as beam
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from rich.console import Console

from pipeline.cli import format_summary, main
from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline.progress import (ReportRowsRead, RunProgress, _CountRowsFn, format_summary_lines, is_local_run,
                               print_summary, progress_wanted, rows_done, summary_rows, summary_table)
from pipeline_fixtures import tiny_config, tiny_model, write_users

MANIFEST = {"rows_read": 1234, "rows_written": 1230, "rows_rejected": 4, "format": "block", "compression": "gzip",
            "rejected_by_reason": {"null_key": 3, "non_finite:dense": 1},
            "rejected_files": [{"file": "_rejected/part-00000-of-00001.parquet", "records": 4, "bytes": 900}],
            "shards": [{"bytes": 2 ** 20}, {"bytes": 2 ** 20}]}


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_terminal_outside_ci():
    assert not progress_wanted(io.StringIO(), environ={})
    assert progress_wanted(FakeTerminal(), environ={})
    assert progress_wanted(FakeTerminal(), environ={"CI": "false"})
    assert not progress_wanted(FakeTerminal(), environ={"CI": "true"})
    assert not progress_wanted(FakeTerminal(), environ={"CI": "1"})
    closed = io.StringIO()
    closed.close()  # isatty() raises on a closed stream
    assert not progress_wanted(closed, environ={})


def test_only_runs_whose_workers_share_this_disk_are_local():
    assert is_local_run("FnApiRunner") and is_local_run("DirectRunner")
    assert is_local_run("PortableRunner", ["--job_endpoint=embed", "--environment_type=LOOPBACK"])
    assert not is_local_run("PortableRunner", ["--environment_type=DOCKER"])
    assert not is_local_run("DataflowRunner") and not is_local_run("FlinkRunner", ["--environment_type=LOOPBACK"])


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_report_rows_read_sums_over_worker_processes(tmp_path, mode):
    counts = list(range(1, 201))
    options = PipelineOptions(["--runner=FnApiRunner", f"--direct_running_mode={mode}", "--direct_num_workers=2"])
    with beam.Pipeline(options=options) as p:
        _ = p | beam.Create(counts) | beam.Reshuffle() | ReportRowsRead(str(tmp_path))
    files = os.listdir(tmp_path)
    assert files and all(f.endswith(".rows") for f in files)  # no temporary files left behind
    assert rows_done(str(tmp_path)) == sum(counts)
    writers = {f.split("-")[0] for f in files}  # file names start with the writing process id
    assert (str(os.getpid()) in writers) == (mode == "in_memory")


def test_export_reports_every_row_read(tmp_path):
    write_users(str(tmp_path / "in"), 600, files=2, bad=True)
    progress = tmp_path / "progress"
    progress.mkdir()
    config = tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), str(tmp_path / "out"),
                         max_reject_fraction=0.1)
    manifest = run_export(preflight(config), progress_dir=str(progress))
    assert rows_done(str(progress)) == manifest["rows_read"] == 608


def test_rows_done_ignores_strays_and_missing_directories(tmp_path):
    assert rows_done(str(tmp_path / "absent")) == 0
    (tmp_path / "a.rows").write_text("5")
    (tmp_path / "b.rows").write_text("")      # created, not yet written
    (tmp_path / "c.rows.tmp").write_text("99")  # being replaced
    (tmp_path / "d.rows").write_text("junk")
    assert rows_done(str(tmp_path)) == 5


def _report(directory, rows):
    fn = _CountRowsFn(directory)
    fn.setup()
    fn.process(rows)
    fn.finish_bundle()


def _wait_for_frame(stream: io.StringIO, text: str, give_up_after: float = 60.0) -> None:
    """Wait until a frame showing ``text`` was drawn (the bar redraws on its own thread); the
    limit only keeps a broken bar from hanging the suite."""
    deadline = time.monotonic() + give_up_after
    while text not in stream.getvalue():
        assert time.monotonic() < deadline, f"no frame showed {text!r}: {stream.getvalue()[-500:]!r}"
        time.sleep(0.005)


def test_progress_bar_renders_rows_total_rate_and_eta_on_a_terminal():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=120, color_system=None)
    with RunProgress(1000, console=console, poll_seconds=0.02) as progress:
        assert os.path.isdir(progress.directory)
        _report(progress.directory, 400)
        _wait_for_frame(stream, "400 / 1,000 rows")
        _report(progress.directory, 600)
        _wait_for_frame(stream, "1,000 / 1,000 rows")
    text = stream.getvalue()
    assert "400 / 1,000 rows" in text
    assert "1,000 / 1,000 rows" in text and "done" in text
    assert "rows/s" in text and "0:00:0" in text  # elapsed and time left
    assert not os.path.exists(progress.directory)  # the side channel is removed


def test_progress_without_a_total_counts_rows():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=120, color_system=None)
    with RunProgress(None, console=console, poll_seconds=0.02) as progress:
        _report(progress.directory, 77)
        _wait_for_frame(stream, "77 rows")
    assert "77 rows" in stream.getvalue() and "/ " not in stream.getvalue().split("77 rows")[0][-5:]


def test_disabled_progress_is_silent():
    stream = io.StringIO()
    with RunProgress(1000, console=Console(file=stream, force_terminal=True), enabled=False) as progress:
        assert progress.directory is None
    assert stream.getvalue() == ""


def test_summary_plain_lines_and_rich_table():
    rows = summary_rows(MANIFEST, 2.0, "/out")
    plain = format_summary_lines(rows)
    assert plain == format_summary(MANIFEST, 2.0, "/out")
    assert plain.splitlines() == [
        "rows read     1,234", "rows written  1,230", "rows rejected 4", "  null_key: 3", "  non_finite:dense: 1",
        "  rejected rows in: /out/_rejected/ (1 file; inspect --key K explains a user's)",
        "shards        2 x block (gzip), 2.0 MiB", "time          2.0 s (617 rows/s)", "output        /out"]
    stream = io.StringIO()
    Console(file=stream, force_terminal=True, width=80, color_system=None).print(summary_table(rows))
    table = stream.getvalue()
    assert "embedding-export run" in table and "│" in table
    assert "rows rejected" in table and "non_finite:dense" in table and "617 rows/s" in table
    stream = io.StringIO()
    print_summary(MANIFEST, 2.0, "/out", stream)  # not a terminal: the plain lines
    assert stream.getvalue() == plain + "\n"


@pytest.fixture(scope="module")
def cli_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress-cli")
    write_users(str(root / "in"), 300, files=2)
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(str(root / "in" / "*.parquet"), tiny_model(),
                                               str(root / "out")).model_dump(mode="json")))
    return str(path), root


def test_cli_is_quiet_when_not_on_a_terminal(cli_config, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    path, root = cli_config
    out, err = io.StringIO(), io.StringIO()
    assert main(["run", "--config", path, "--set", f"output.path={root / 'plain'}"], out=out, err=err) == 0
    assert err.getvalue() == ""
    assert out.getvalue().startswith("rows read     300\n") and "│" not in out.getvalue()


def test_cli_on_a_terminal_shows_progress_and_a_table(cli_config, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    path, root = cli_config
    out, err = FakeTerminal(), FakeTerminal()
    assert main(["run", "--config", path, "--set", f"output.path={root / 'tty'}"], out=out, err=err) == 0
    assert "300 / 300 rows" in err.getvalue() and "rows/s" in err.getvalue()
    assert "│" in out.getvalue() and "rows written" in out.getvalue()
    monkeypatch.setenv("CI", "true")  # CI: plain, even on a terminal
    out, err = FakeTerminal(), FakeTerminal()
    assert main(["run", "--config", path, "--set", f"output.path={root / 'ci'}"], out=out, err=err) == 0
    assert "rows/s" not in err.getvalue() and out.getvalue().startswith("rows read     300\n")
