"""SIGTERM and SIGINT stop a run cleanly: one line on stderr (no traceback), the run's scratch
files and claim removed, nothing published, and a documented exit status: 143 for SIGTERM, 130
for SIGINT (128 + the signal's number, as a shell reports it).

The real command line in a subprocess, stopped at a named moment (``transforms.pause_points``):
while reading (the pipeline is running) and right after it claimed the output directory (the
pipeline is being built).
"""
import signal

import pytest

from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import FIGURES, final_looking, start_cli, tree, wait_for, write_config
from transforms.pause_points import PAUSE_AT_ENV, PAUSE_DIR_ENV

pytestmark = pytest.mark.timeout(300)

STOPS = FIGURES.setdefault("runs stopped by a signal (moment, signal, exit status, files left)", [])


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    write_users(str(root / "in"), 600, files=2)
    return str(root / "in" / "*.parquet")


@pytest.mark.parametrize("moment", ["run.claimed", "read.row_group"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_with_one_line_and_no_scratch(users, tmp_path, moment, sig):
    out = tmp_path / "out"
    path = write_config(tiny_config(users, tiny_model(), str(out), num_shards=4), str(tmp_path / "c.yaml"))
    proc = start_cli(path, **{PAUSE_AT_ENV: moment, PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / moment).exists(), proc), proc.communicate()[1].decode()[-3000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    left = tree(str(out)) if out.exists() else []
    STOPS.append((moment, sig.name, proc.returncode, len(left)))
    assert proc.returncode == 128 + sig, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("embedding-export:")]
    assert ours == [f"embedding-export: stopped by {sig.name} (exit {128 + sig}): nothing was published; its "
                    "scratch files and claim were removed"], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert left == [] and final_looking(str(out)) == [] if out.exists() else True
