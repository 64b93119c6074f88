"""The ``embedding-export`` command line.

    embedding-export run --config run_configs/local.yaml [--set section.key=value ...]
                         [--overwrite] [--dry-run] [-- extra Beam options]
    embedding-export demo [--out DIR] [--users N]
    embedding-export verify DIR          check every shard, record and count of an export
    embedding-export inspect DIR [--head N] [--key K] [--plot FILE.png]

One argument tree: ``-v`` goes before any subcommand, and each subcommand is added by its module
(``run`` here, ``demo`` by ``pipeline.demo.run``, ``verify`` and ``inspect`` by ``pipeline.tools``).

Exit status: 0 done, 1 the export failed, 2 the config, model, input or output directory does not
fit (nothing ran), 130 ``run`` stopped by SIGINT (Ctrl-C), 143 ``run`` stopped by SIGTERM. A
stopped run prints one line, removes its scratch files and its claim on the output directory,
and publishes nothing (a signal that lands after ``_SUCCESS`` is written leaves the finished
export, and the line says so).

``run`` draws live progress on a terminal for local runners (``pipeline.progress``) and ends with a
summary (a table on a terminal, plain lines otherwise). ``run --dry-run`` resolves and validates
the Beam options for the configured runner (``pipeline.runner_options``) and, where this machine
can open the paths, checks the model and input; it submits nothing.
"""
from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
import time
import traceback
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

from pipeline.logs import setup_logging

__all__ = ["main", "build_parser", "format_summary", "format_plan"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGNAL_BASE = 128  # + the signal number, as a shell reports a process a signal ended


class Interrupted(BaseException):
    """A signal stopped the run (SIGTERM; SIGINT arrives as KeyboardInterrupt). A BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_SIGNALS_RECEIVED: List[int] = []  # Beam re-raises an exception from a DoFn as a RuntimeError: remembered here


def _raise_interrupted(signum, _frame):
    # Later signals are ignored while the first one's exception unwinds and cleans up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _SIGNALS_RECEIVED.append(signum)
    # The runner logs the exception this raises in a DoFn with its traceback: the line printed at
    # the end says what happened.
    logging.disable(logging.CRITICAL)
    raise Interrupted(signum)


def _run_stopping_on_signals(args, out: TextIO, err: TextIO) -> int:
    """``_run``, with SIGTERM and SIGINT turned into one line, the run's scratch removed, and exit
    status 128 + the signal's number (only in the main thread: elsewhere signals stay as they are)."""
    if threading.current_thread() is not threading.main_thread():
        return _run(args, out, err)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    published: List[str] = []
    _SIGNALS_RECEIVED.clear()
    try:
        return _run(args, out, err, published)
    except (Interrupted, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        if published and _finished_by(*published):
            what = f"the export in {published[0]} had been published (_SUCCESS) before it"
        else:
            what = "nothing was published; its scratch files and claim were removed"
        print(f"embedding-export: stopped by {name} (exit {EXIT_SIGNAL_BASE + signum}): {what}", file=err)
        err.flush()
        return EXIT_SIGNAL_BASE + signum
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if _SIGNALS_RECEIVED:
            logging.disable(logging.NOTSET)


def _finished_by(output_path: str, run_id: str) -> bool:
    """Whether ``output_path`` holds a finished export written by run ``run_id``."""
    try:
        from transforms.outputdir import read_manifest
        return read_manifest(output_path, require_success=True).raw.get("run_id") == run_id
    except Exception:
        return False

RUN_EPILOG = f"""\
Beam options:
  Everything after a bare -- goes to Beam as pipeline options, after the config's
  runner.options (so they win), e.g.
    embedding-export run --config run_configs/dataflow.yaml -- --project=my-project --region=us-central1
  A runner option the config leaves as <PLACEHOLDER> is filled by the same option after --.
  Options no Beam options class defines are reported by --dry-run (Beam would drop them).

Exit status:
  {EXIT_OK}  the export is complete (_SUCCESS written), or the dry run found no problem
  {EXIT_FAILED}  the export failed: nothing final-looking was published
  {EXIT_USAGE}  the config, model, input or output directory does not fit (or another run
     holds the output directory); nothing ran
  {EXIT_SIGNAL_BASE + 2}  stopped by SIGINT (Ctrl-C), {EXIT_SIGNAL_BASE + 15} stopped by SIGTERM: scratch files and claim
     removed, nothing published

Config keys: docs/CONFIG.md. Output layout and manifest: docs/FORMAT.md."""


def build_parser() -> argparse.ArgumentParser:
    """The one argument tree: ``-v`` and the subcommands, each added by the module that runs it."""
    from pipeline.demo.run import register as register_demo
    from pipeline.tools.inspection import register as register_inspect
    from pipeline.tools.verify import register as register_verify
    from twml._version import __version__

    parser = argparse.ArgumentParser(
        prog="embedding-export",
        description="Export user embeddings as twml DataRecords with Apache Beam.",
        epilog="Arguments after a bare -- go to Beam as pipeline options (they override the config's); "
               "see run --help.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what Beam and TensorFlow log at INFO (quiet by default)")
    sub = parser.add_subparsers(dest="command", required=True)
    _register_run(sub)
    register_demo(sub)
    register_verify(sub)
    register_inspect(sub)
    return parser


def _register_run(sub) -> None:
    run = sub.add_parser("run", help="run an export from a YAML run config",
                         usage="embedding-export [-v] run --config FILE [--set SECTION.KEY=VALUE ...] "
                               "[--overwrite] [--dry-run] [-- BEAM OPTIONS ...]",
                         epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", required=True, help="the run config (see run_configs/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a config value (repeatable), e.g. --set partition.num_shards=8")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier export in the output directory (only its own files)")
    run.add_argument("--dry-run", action="store_true",
                     help="resolve and validate the Beam options, check the config, model and input, "
                          "print the plan, and stop (nothing is submitted)")
    run.set_defaults(handler=_run_stopping_on_signals)


def _split_beam_args(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def format_plan(plan, beam_args: Sequence[str] = ()) -> str:
    """What a run would do, for --dry-run."""
    from pipeline.plan import key_id_feature
    from transforms.model_files import tensorflow_opens

    cfg = plan.config
    rows = ("rows unknown until read (DataRecord files carry no count)" if plan.total_rows is None
            else f"{plan.total_rows:,} rows")
    lines = [f"input:   {cfg.input.path}: {len(plan.files)} file(s), {rows}"]
    if cfg.input.format == "datarecord":
        kind = "string" if cfg.input.key_type == "string" else "discrete"
        lines.append(f"  {cfg.input.container} files of DataRecords, key <- {kind} feature {cfg.input.key}")
        for name, column in (cfg.input.features or {}).items():
            names = column.names
            shown = ", ".join(names) if len(names) <= 4 else f"{names[0]}, ..., {names[-1]} ({len(names)})"
            default = f", default {column.default}" if column.default is not None else ""
            lines.append(f"  column {name} <- {column.kind} {shown}{default}")
    lines.append(f"model:   {cfg.model.path} [{cfg.model.signature}], batch {cfg.model.batch_size}")
    if "://" in cfg.model.path and not tensorflow_opens(cfg.model.path):
        lines.append(f"  TensorFlow cannot open {cfg.model.path.split('://')[0]}://: each worker process copies "
                     f"the model to a local directory through Beam's file system (checked: listed)")
    for spec in plan.inputs:
        shape = "[B]" if spec.length is None else f"[B, {spec.length}]"
        extra = f", pad {spec.pad}" if spec.kind == "padded" else ""
        lines.append(f"  input  {spec.name} {spec.dtype}{shape} <- column {spec.column} ({spec.kind}{extra})")
    for spec in plan.outputs:
        shape = ", ".join("?" if d is None else str(d) for d in spec.shape)
        lines.append(f"  output {spec.name} {spec.dtype}[B{', ' if shape else ''}{shape}] -> feature "
                     f"{spec.feature} ({spec.feature_id})")
    if plan.layout.string_keys:
        lines.append(f"  string key {cfg.input.key} -> stringFeatures {cfg.output.key_feature}, its id "
                     f"feature_id(key) -> discreteFeatures {key_id_feature(cfg.output)}")
    by = "fmix64(key)" if plan.partition.column is None else f"column {plan.partition.column}"
    if plan.layout.string_keys and plan.partition.column is None:
        by = "fmix64(key_id)"
    lines += [
        f"shards:  {plan.partition.num_shards} by {by}",
        f"output:  {plan.layout.path} ({plan.layout.format}, compression {plan.layout.compression})",
        f"runner:  {cfg.runner.name} {' '.join([*cfg.runner.options, *beam_args])}".rstrip(),
    ]
    for path, error in plan.skipped_files:
        lines.append(f"skipped: {path}: {error}")
    return "\n".join(lines)


def format_summary(manifest: Dict, seconds: float, output_path: str) -> str:
    """The closing summary of a run, as plain lines."""
    from pipeline.progress import format_summary_lines, summary_rows
    return format_summary_lines(summary_rows(manifest, seconds, output_path))


def _dry_run(args, config, beam_args: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Resolve and validate everything that can be checked from here; submit nothing.

    Beam options are always checked. The model signature, input files and output directory are
    checked once no placeholder is left and this machine has a file system for their paths
    (gs:// needs apache-beam[gcp], hdfs:// the hdfs package); otherwise the output says which
    checks were skipped and why. Exit 2 when anything found would stop the run.
    """
    from pipeline.plan import find_placeholders, preflight
    from pipeline.runner_options import check_runner_options, format_options_check, unreachable_paths
    from transforms.errors import PreflightError

    check = check_runner_options(config, beam_args)
    placeholders = find_placeholders(config, beam_args)
    # Beam's complaints about a value that is still a placeholder say nothing the list below does not.
    problems = [e for e in check.errors if not (placeholders and re.search(r"<[A-Z][A-Z0-9_]*>", e))]
    skipped = []
    if placeholders:
        problems.append("placeholders left to fill in (edit the file, use --set section.key=value, or give "
                        "the Beam option after --, e.g. -- --project=my-project): " + "; ".join(placeholders))
        skipped.append("model signature, input files and output directory: not checked until the "
                       "placeholders are filled in")
    else:
        unreachable = unreachable_paths(config)
        if unreachable:
            skipped.append("model signature, input files and output directory: not checked, this machine "
                           "cannot open their paths (nor could a run launched from here): " + "; ".join(unreachable))
        else:
            try:
                plan = preflight(config, overwrite=args.overwrite, beam_args=beam_args)
            except PreflightError as e:
                problems.extend(e.problems)   # preflight reports every problem it finds, not only the first
            except Exception as e:  # the file system itself failed, e.g. an HDFS namenode not reachable
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                problems.append(f"model, input and output could not be checked: {type(e).__name__}: {first}")
            else:
                print(format_plan(plan, beam_args), file=out)
    print(format_options_check(check), file=out)
    for note in check.notes:
        print(f"note:    {note}", file=out)
    for what in skipped:
        print(f"skipped: {what}", file=out)
    if problems:
        print(f"embedding-export: dry run: {len(problems)} problem(s) would stop this run:", file=err)
        for problem in problems:
            print(f"  - {problem}", file=err)
        return EXIT_USAGE
    print("dry run: no problems found" + (" in what could be checked here" if skipped else "")
          + "; nothing was submitted", file=out)
    return EXIT_OK


def _run(args, out: TextIO, err: TextIO, published: Optional[List[str]] = None) -> int:
    """Load the config, make the plan once (``pipeline.plan.preflight``), and run it; ``published``
    gets the output path and run id (for the line a signal prints)."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.config import ConfigError, load_config
    from pipeline.job import freeze_heap, pipeline_options, run_export
    from pipeline.plan import find_placeholders, preflight
    from pipeline.progress import RunProgress, is_local_run, print_summary, progress_wanted
    from pipeline.runner_options import fill_placeholder_options, unreachable_paths
    from transforms.errors import ExportError, PreflightError

    beam_args = args.beam_args

    try:
        # A runner option left as <PLACEHOLDER> in the file is filled by the same option after --.
        config = fill_placeholder_options(load_config(args.config, args.overrides), beam_args)
        FileSystems.set_options(pipeline_options(config, beam_args))
        if args.dry_run:
            return _dry_run(args, config, beam_args, out, err)
        unreachable = [] if find_placeholders(config, beam_args) else unreachable_paths(config)
        if unreachable:
            raise PreflightError("this machine cannot open the job's paths: " + "; ".join(unreachable))
        plan = preflight(config, overwrite=args.overwrite, beam_args=beam_args)
    except (ConfigError, PreflightError) as e:
        print(f"embedding-export: {e}", file=err)
        return EXIT_USAGE
    if published is not None:  # where and as which run, for the line a signal prints
        published[:] = [plan.layout.path, plan.run_id]
    if args.own_process:
        freeze_heap()
    live = progress_wanted(err) and is_local_run(config.runner.name, [*config.runner.options, *beam_args])
    console = None
    if live:
        from rich.console import Console
        console = Console(file=err)
    start = time.perf_counter()
    try:
        with RunProgress(plan.total_rows, console=console, enabled=live) as progress:
            manifest = run_export(plan, beam_args, progress_dir=progress.directory,
                                  on_launch=lambda result, options: _say_launch(result, options, err))
    except PreflightError as e:  # another run claimed the output directory meanwhile
        print(f"embedding-export: {e}", file=err)
        return EXIT_USAGE
    except Exception as e:  # a worker error, as the runner reports it
        if _SIGNALS_RECEIVED:  # the signal's exception, wrapped by the runner
            raise Interrupted(_SIGNALS_RECEIVED[0]) from None
        if isinstance(e, ExportError):
            print(f"embedding-export: export failed: {e}", file=err)
            return EXIT_FAILED
        if args.verbose:
            traceback.print_exc(file=err)
        print(f"embedding-export: export failed: {type(e).__name__}: {e}", file=err)
        return EXIT_FAILED
    print_summary(manifest, time.perf_counter() - start, plan.layout.path, out)
    return EXIT_OK


def _file_system_options_only(beam_args: Sequence[str]) -> bool:
    """Whether every option is one of Beam's file-system options (HDFS, S3, Azure, GCS project)."""
    from apache_beam.options.pipeline_options import (AzureOptions, GoogleCloudOptions, HadoopFileSystemOptions,
                                                      S3Options)

    parser = argparse.ArgumentParser(add_help=False)
    for options_class in (HadoopFileSystemOptions, S3Options, AzureOptions, GoogleCloudOptions):
        options_class._add_argparse_args(parser)
    known = {flag for action in parser._actions for flag in action.option_strings}
    return all(arg.split("=", 1)[0] in known for arg in beam_args if arg.startswith("--"))


def _say_launch(result, options, err: TextIO) -> None:
    """A remote job's id and console URL, as soon as it is submitted (Beam logs them at INFO)."""
    from pipeline.runner_options import launch_notice

    notice = launch_notice(result, options)
    if notice:
        print(notice, file=err, flush=True)


def _verbose_flag(argv: Sequence[str]) -> bool:
    """Whether -v/--verbose comes before the subcommand (read ahead of the parser)."""
    for arg in argv:
        if not arg.startswith("-"):
            return False
        if arg in ("-v", "--verbose"):
            return True
    return False


def main(argv: Optional[Sequence[str]] = None, out: TextIO = None, err: TextIO = None) -> int:
    """Run the command line; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    own, beam_args = _split_beam_args(sys.argv[1:] if argv is None else argv)
    # First, before the subcommands' modules import TF or Beam (their start-up notices are
    # decided at import).
    setup_logging(_verbose_flag(own))
    args = build_parser().parse_args(own)
    if beam_args and args.command in ("verify", "inspect") and _file_system_options_only(beam_args):
        # A remote export's file system, e.g. -- --hdfs_host=nn --hdfs_port=9870 --hdfs_user=etl
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions
        FileSystems.set_options(PipelineOptions(beam_args))
    elif beam_args and args.command != "run":
        print("embedding-export: Beam options (after --) apply to `run` only; `verify` and `inspect` take "
              "file-system options there (--hdfs_host, --hdfs_port, --hdfs_user, --s3_*, ...)", file=err)
        return EXIT_USAGE
    args.beam_args = beam_args
    args.own_process = argv is None  # the command's own process (a caller passes argv)
    return args.handler(args, out, err)


if __name__ == "__main__":
    sys.exit(main())
