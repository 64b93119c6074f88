"""The ``embedding-export`` command line.

    embedding-export run --config run_configs/local.yaml [--set section.key=value ...]
                         [--overwrite] [--dry-run] [-- extra Beam options]
    embedding-export demo [--out DIR] [--users N]
    embedding-export verify DIR          check every shard, record and count of an export
    embedding-export inspect DIR [--head N] [--key K] [--plot FILE.png]

Exit status: 0 done, 1 the export failed, 2 the config, model or input does not fit (nothing ran).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

__all__ = ["main", "build_parser", "format_summary", "format_plan"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedding-export",
        description="Export user embeddings as twml DataRecords with Apache Beam.",
        epilog="Arguments after a bare -- go to Beam as pipeline options (they override the config's).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an export from a YAML run config")
    run.add_argument("--config", required=True, help="the run config (see run_configs/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a config value (repeatable), e.g. --set partition.num_shards=8")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier export in the output directory (only its own files)")
    run.add_argument("--dry-run", action="store_true",
                     help="check the config, model and input, print the plan, and stop")
    demo = sub.add_parser("demo", help="generate demo data and a model, then export them")
    demo.add_argument("--out", default="demo", help="the demo directory (default: demo)")
    demo.add_argument("--users", type=int, default=100000, help="number of generated users (default: 100000)")
    # verify and inspect parse their own arguments (pipeline.verify.main, pipeline.inspection.main).
    sub.add_parser("verify", add_help=False,
                   help="check an export: framing, checksums, every record, placement, manifest counts")
    sub.add_parser("inspect", add_help=False,
                   help="print decoded records as JSON lines; --key K, --plot FILE.png")
    return parser


def _split_beam_args(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def format_plan(plan, beam_args: Sequence[str] = ()) -> str:
    """What a run would do, for --dry-run."""
    cfg = plan.config
    lines = [
        f"input:   {cfg.input.path}: {len(plan.files)} file(s), {plan.total_rows:,} rows",
        f"model:   {cfg.model.path} [{cfg.model.signature}], batch {cfg.model.batch_size}",
    ]
    for spec in plan.inputs:
        shape = "[B]" if spec.length is None else f"[B, {spec.length}]"
        extra = f", pad {spec.pad}" if spec.kind == "padded" else ""
        lines.append(f"  input  {spec.name} {spec.dtype}{shape} <- column {spec.column} ({spec.kind}{extra})")
    for spec in plan.outputs:
        shape = ", ".join("?" if d is None else str(d) for d in spec.shape)
        lines.append(f"  output {spec.name} {spec.dtype}[B{', ' if shape else ''}{shape}] -> feature "
                     f"{spec.feature} ({spec.feature_id})")
    by = "fmix64(key)" if plan.partition.column is None else f"column {plan.partition.column}"
    lines += [
        f"shards:  {plan.partition.num_shards} by {by}",
        f"output:  {plan.layout.path} ({plan.layout.format}, compression {plan.layout.compression})",
        f"runner:  {cfg.runner.name} {' '.join([*cfg.runner.options, *beam_args])}".rstrip(),
    ]
    for path, error in plan.skipped_files:
        lines.append(f"skipped: {path}: {error}")
    return "\n".join(lines)


def format_summary(manifest: Dict, seconds: float, output_path: str) -> str:
    """The closing summary of a run."""
    shards = manifest.get("shards", [])
    rows_read = int(manifest.get("rows_read", 0))
    size = sum(int(s.get("bytes", 0)) for s in shards)
    lines = [
        f"rows read     {rows_read:,}",
        f"rows written  {int(manifest.get('rows_written', 0)):,}",
        f"rows rejected {int(manifest.get('rows_rejected', 0)):,}",
    ]
    for reason, count in (manifest.get("rejected_by_reason") or {}).items():
        lines.append(f"  {reason}: {count:,}")
    lines += [
        f"shards        {len(shards)} x {manifest.get('format')}"
        f"{'' if manifest.get('compression') in (None, 'none') else ' (' + manifest['compression'] + ')'}"
        f", {size / 2**20:,.1f} MiB",
        f"time          {seconds:,.1f} s ({rows_read / seconds:,.0f} rows/s)" if seconds > 0 else "time          n/a",
        f"output        {output_path}",
    ]
    return "\n".join(lines)


def _run(args, beam_args: Sequence[str], out: TextIO, err: TextIO) -> int:
    from apache_beam.io.filesystems import FileSystems

    from pipeline.config import ConfigError, load_config
    from pipeline.job import pipeline_options, run_export
    from pipeline.preflight import PreflightError, preflight
    from transforms.finalize import ExportError

    try:
        config = load_config(args.config, args.overrides)
        FileSystems.set_options(pipeline_options(config, beam_args))
        plan = preflight(config, overwrite=args.overwrite, beam_args=beam_args)
    except (ConfigError, PreflightError) as e:
        print(f"embedding-export: {e}", file=err)
        return EXIT_USAGE
    if args.dry_run:
        print(format_plan(plan, beam_args), file=out)
        return EXIT_OK
    start = time.perf_counter()
    try:
        manifest = run_export(plan.config, beam_args, overwrite=plan.overwrite, plan=plan)
    except ExportError as e:
        print(f"embedding-export: export failed: {e}", file=err)
        return EXIT_FAILED
    except Exception as e:  # a worker error, as the runner reports it
        if args.verbose:
            traceback.print_exc(file=err)
        print(f"embedding-export: export failed: {type(e).__name__}: {e}", file=err)
        return EXIT_FAILED
    print(format_summary(manifest, time.perf_counter() - start, plan.layout.path), file=out)
    return EXIT_OK


def _demo(args, out: TextIO, err: TextIO) -> int:
    from pipeline.demo import run_demo  # imported here: it pulls in TF and the model builder

    if args.users < 0:
        print("embedding-export: --users must be >= 0", file=err)
        return EXIT_USAGE
    run_demo(args.out, args.users, stream=out)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None, out: TextIO = None, err: TextIO = None) -> int:
    """Run the command line; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    own, beam_args = _split_beam_args(sys.argv[1:] if argv is None else argv)
    if own and own[0] == "verify":
        from pipeline.verify import main as verify_main
        return verify_main(own[1:])
    if own and own[0] == "inspect":
        from pipeline.inspection import main as inspect_main
        return inspect_main(own[1:])
    args = build_parser().parse_args(own)
    if not args.verbose:
        # TensorFlow's C++ start-up notices (set before TF is imported; worker processes inherit it).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "run":
        return _run(args, beam_args, out, err)
    if beam_args:
        print("embedding-export: Beam options (after --) apply to `run` only", file=err)
        return EXIT_USAGE
    return _demo(args, out, err)


if __name__ == "__main__":
    sys.exit(main())
