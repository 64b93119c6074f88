"""``embedding-export demo``: generated user features, the demo model, and one local export run.

``run_demo`` writes ``<out>/users/part-*.parquet`` (seeded random users, ``pipeline.demo.users``),
builds ``<out>/model`` (the demo SavedModel of ``pipeline.demo.models``; reused when it is already
there with the same arguments), writes ``<out>/run_config.yaml`` (``run_configs/local.yaml`` with
the paths moved under ``<out>``), runs the export into ``<out>/export`` and prints a summary. The
demo owns ``<out>``: running it again replaces the data and the export.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, TextIO

from pipeline.demo.models import demo_model_kwargs, ensure_embedding_model
from pipeline.demo.users import generate_users

__all__ = ["demo_config", "run_demo", "register"]


def demo_config(out_dir: str) -> Dict[str, Any]:
    """The raw run config of the demo: ``run_configs/local.yaml`` with its paths under ``out_dir``.

    Paths are absolute, so the written ``run_config.yaml`` works from any directory.
    """
    root = os.path.abspath(out_dir)
    model = demo_model_kwargs()
    return {
        "input": {"format": "parquet", "path": os.path.join(root, "users", "*.parquet"), "key": "user_id"},
        "model": {
            "path": os.path.join(root, "model"),
            "signature": "serving_default",
            "batch_size": 4096,
            "inputs": {"dense": {"column": "dense"},
                       "sparse_ids": {"column": "sparse_ids", "length": model["sparse_length"], "pad": 0}},
            "outputs": {"embedding": {"feature": "output"}},
            "intra_op_threads": 1,
        },
        "partition": {"num_shards": 16, "by": "hash"},
        "output": {"path": os.path.join(root, "export"), "format": "tfrecord", "compression": "none",
                   "key_feature": "meta.user_id"},
        # FnApiRunner, named explicitly, as in local.yaml: "DirectRunner" first tries Prism, which
        # it downloads, so a run would differ with and without a network (docs/RUNNING.md).
        "runner": {"name": "FnApiRunner",
                   "options": ["--direct_running_mode=in_memory", "--direct_num_workers=1"]},
    }


def _print_summary(manifest: Dict[str, Any], seconds: float, out_dir: str, stream=None) -> None:
    """The demo's closing summary: a rich table on a terminal, plain lines otherwise (or without rich)."""
    from pipeline.extras import available

    stream = stream or sys.stdout
    rows_read = int(manifest.get("rows_read", 0))
    shards = manifest.get("shards") or []
    root = os.path.abspath(out_dir)
    facts = [
        ("rows read", f"{rows_read:,}"),
        ("rows written", f"{int(manifest.get('rows_written', 0)):,}"),
        ("rows rejected", f"{int(manifest.get('rows_rejected', 0)):,}"),
        ("shards", f"{len(shards)} x {manifest.get('format', '?')}"
                   f" ({sum(int(s.get('bytes', 0)) for s in shards) / 2**20:,.1f} MiB)"),
        ("export time", f"{seconds:,.1f} s"),
        ("throughput", f"{rows_read / seconds:,.0f} rows/s" if seconds > 0 else "n/a"),
        ("input", os.path.join(root, "users")),
        ("model", os.path.join(root, "model")),
        ("output", os.path.join(root, "export")),
        ("run config", os.path.join(root, "run_config.yaml")),
    ]
    console = None
    if available("rich"):
        from rich.console import Console
        console = Console(file=stream)
    if console is None or not console.is_terminal:
        print("embedding-export demo: done", file=stream)
        for name, value in facts:
            print(f"  {name + ':':<15}{value}", file=stream)
        return
    from rich.table import Table

    table = Table(title="embedding-export demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in facts:
        table.add_row(name, value)
    console.print(table)


def run_demo(out_dir: str = "demo", users: int = 100000, *, seed: int = 0, stream=None) -> Dict[str, Any]:
    """Generate the demo data and model under ``out_dir``, export into ``out_dir/export``, print a summary.

    Args:
      out_dir: the demo's own directory (data, model, run config and export are replaced on rerun).
      users: number of generated users.
      seed: seed of the generated data (the model is always the seed-0 demo model).
      stream: where the summary goes (default stdout).
    Returns:
      the export's manifest (``_MANIFEST.json`` as a dict).
    """
    import yaml

    from pipeline.config import parse_config
    from pipeline.job import run_export
    from pipeline.plan import preflight

    model = demo_model_kwargs()
    generate_users(out_dir, users, seed=seed, dense_dim=model["dense_dim"])
    ensure_embedding_model(os.path.join(out_dir, "model"), **model)
    raw = demo_config(out_dir)
    config = parse_config(raw, source="demo config")
    Path(out_dir, "run_config.yaml").write_text(
        "# Written by `embedding-export demo`: run_configs/local.yaml with the paths under this directory.\n"
        + yaml.safe_dump(raw, sort_keys=False))
    start = time.perf_counter()
    manifest = run_export(preflight(config, overwrite=True))
    _print_summary(manifest, time.perf_counter() - start, out_dir, stream)
    return manifest


def register(subcommands) -> None:
    """Add ``demo`` to the command line's subcommands (``pipeline.cli``)."""
    parser = subcommands.add_parser("demo", help="generate demo data and a model, then export them")
    parser.add_argument("--out", default="demo", help="the demo directory (default: demo)")
    parser.add_argument("--users", type=int, default=100000, help="number of generated users (default: 100000)")
    parser.set_defaults(handler=_demo)


def _demo(opts: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if opts.users < 0:
        print("embedding-export: --users must be >= 0", file=err)
        return 2
    run_demo(opts.out, opts.users, stream=out)
    return 0
