"""One argument tree: ``-v`` works before every subcommand, and each subcommand's options come
from the module that runs it."""
import io

import pytest

from pipeline.cli import build_parser, main


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_verbose_goes_before_the_tools(tmp_path, command):
    err = io.StringIO()
    status = main(["-v", command, str(tmp_path / "missing")], out=io.StringIO(), err=err)
    assert status == 2  # the tool ran and refused the path; argparse did not reject -v
    assert f"{command}: {tmp_path / 'missing'} is not an export directory" in err.getvalue()


def test_each_subcommand_brings_its_own_options(capsys):
    parser = build_parser()
    for argv, option in ((["verify", "--help"], "--processes"), (["inspect", "--help"], "--plot"),
                         (["demo", "--help"], "--users"), (["run", "--help"], "--dry-run")):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 0
        assert option in capsys.readouterr().out


def test_tool_options_are_parsed_by_the_tree(tmp_path):
    args = build_parser().parse_args(["-v", "verify", str(tmp_path), "--processes", "3", "--json"])
    assert (args.verbose, args.command, args.processes, args.json) == (True, "verify", 3, True)


def test_beam_options_are_refused_for_the_tools(tmp_path):
    err = io.StringIO()
    assert main(["verify", str(tmp_path), "--", "--runner=DirectRunner"], out=io.StringIO(), err=err) == 2
    assert "apply to `run` only" in err.getvalue()
