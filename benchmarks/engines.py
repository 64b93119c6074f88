"""The demo export on each runner and file system this machine has: seconds, marginal rows/s, same records.

    python benchmarks/engines.py [--users 20000] [--repeats 3] [--json FILE] [--workdir DIR] [--hdfs "HOST RPC HTTP"]

For each runner the demo export (demo data and model, 16 hash shards, TFRecord) runs at N/2 and
N users, in this process, after one warm-up run (TensorFlow's import and the model's first load
are paid there). Reported per runner, as the median of the repeats: seconds at N (the run alone:
no interpreter or TensorFlow start-up, but the runner's own start-up, e.g. Prism's job service or
the worker processes), the marginal rate (N/2 rows over the median time between the two sizes:
what the runner sustains once started), and whether every shard holds the same records as the
in-process FnApiRunner's export of the same users (in every repeat). The HDFS row reads its input and model from, and writes to, an HDFS (``--hdfs``, or one
started with ``.ci/engines/hdfs.sh`` when the jars are cached). One run each: the machine is
shared, so read the figures as ratios between rows of one invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.config import parse_config  # noqa: E402
from pipeline.demo.models import demo_model_kwargs, ensure_embedding_model  # noqa: E402
from pipeline.demo.run import demo_config  # noqa: E402
from pipeline.demo.users import generate_users  # noqa: E402
from pipeline.local_engines import prism_binary  # noqa: E402

FNAPI = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
RUNNERS = {
    "FnApiRunner in-process": ("FnApiRunner", FNAPI),
    "FnApiRunner 2 processes": ("FnApiRunner", ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]),
    "PortableRunner (embedded job service, LOOPBACK)": ("PortableRunner",
                                                        ["--job_endpoint=embed", "--environment_type=LOOPBACK"]),
    "DirectRunner on Prism": ("DirectRunner", []),
    "FnApiRunner in-process, HDFS input/model/output": ("FnApiRunner", FNAPI),
}
HDFS_ROW = "FnApiRunner in-process, HDFS input/model/output"


def _records(out: str, manifest: Dict[str, Any], fetch: Callable[[str], bytes]) -> List[List[bytes]]:
    from twml.io.tfrecord import read_tfrecords
    shards = []
    for entry in manifest["shards"]:
        with tempfile.NamedTemporaryFile() as handle:
            handle.write(fetch(f"{out}/{entry['file']}"))
            handle.flush()
            shards.append(sorted(read_tfrecords(handle.name)))
    return shards


def _read(path: str) -> bytes:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def _start_hdfs(workdir: str) -> Optional[str]:
    proc = subprocess.run([os.path.join(ROOT, ".ci", "engines", "hdfs.sh"), "start", workdir],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def run(users: int, workdir: str, hdfs: Optional[str], repeats: int = 3) -> Dict[str, Any]:
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.job import run_export
    from pipeline.plan import preflight

    sizes = [users // 2, users]
    model = os.path.join(workdir, "model")
    ensure_embedding_model(model, **demo_model_kwargs())
    started_hdfs = None
    hdfs_args: List[str] = []
    if hdfs is None and shutil.which("java"):
        started_hdfs = os.path.join(workdir, "minihdfs")
        hdfs = _start_hdfs(started_hdfs)
    if hdfs:
        host, rpc, http = hdfs.split()
        hdfs_args = [f"--hdfs_host={host}", f"--hdfs_port={http}", "--hdfs_user=bench", "--hdfs_full_urls"]
        FileSystems.set_options(PipelineOptions(hdfs_args))
        sys.path.insert(0, os.path.join(ROOT, "tests", "engines"))
        from engines_support import upload_tree
        remote = f"hdfs://{host}:{rpc}/bench-{os.getpid()}"
        upload_tree(model, remote + "/model")
    results: Dict[str, Any] = {}
    times: Dict[str, Dict[int, List[float]]] = {}
    reference: Dict[int, List[List[bytes]]] = {}
    try:
        for size in sizes:
            data = os.path.join(workdir, f"users-{size}")
            generate_users(data, size, dense_dim=demo_model_kwargs()["dense_dim"])
            if hdfs:
                upload_tree(os.path.join(data, "users"), f"{remote}/users-{size}")
        for repeat in range(-1, repeats):  # -1: the warm-up, not reported
            for size in sizes:
                data = os.path.join(workdir, f"users-{size}")
                for name, (runner, options) in RUNNERS.items():
                    if repeat < 0 and (size != sizes[0] or name != "FnApiRunner in-process"):
                        continue
                    if name == HDFS_ROW and not hdfs:
                        results[name] = {"skipped": "no HDFS (no java, or `make engines` not run)"}
                        continue
                    if runner == "DirectRunner" and prism_binary() is None:
                        results[name] = {"skipped": "no Prism binary (`make engines`)"}
                        continue
                    raw = demo_config(data)
                    raw["model"]["path"] = model
                    raw["runner"] = {"name": runner, "options": options}
                    out = os.path.join(workdir, "out", f"runner{list(RUNNERS).index(name)}", str(size))
                    args: List[str] = []
                    if name == HDFS_ROW:
                        raw["input"]["path"] = f"{remote}/users-{size}/*.parquet"
                        raw["model"]["path"] = remote + "/model"
                        out = f"{remote}/out-{size}"
                        args = hdfs_args
                    raw["output"]["path"] = out
                    if args:  # the previous local run's workers set FileSystems to their options
                        FileSystems.set_options(PipelineOptions(args))
                    start = time.perf_counter()
                    manifest = run_export(preflight(parse_config(raw, "<bench>"), overwrite=True, beam_args=args),
                                          beam_args=args)
                    seconds = time.perf_counter() - start
                    if repeat < 0:
                        continue
                    records = _records(out, manifest, _read)
                    if name == "FnApiRunner in-process":
                        reference[size] = records
                    same = records == reference[size]
                    entry = results.setdefault(name, {"same_records": True})
                    entry["same_records"] = entry["same_records"] and same
                    entry[f"rows_written_{size}"] = manifest["rows_written"]
                    times.setdefault(name, {}).setdefault(size, []).append(seconds)
                    print(f"{name}: {size} users in {seconds:.1f} s, same records: {same}", flush=True)
        for name, by_size in times.items():
            entry = results[name]
            low, high = (statistics.median(by_size[s]) for s in sizes)
            entry["seconds"] = {str(s): [round(t, 1) for t in by_size[s]] for s in sizes}
            entry[f"median_seconds_{sizes[1]}"] = round(high, 1)
            entry["marginal_rows_per_s"] = round((sizes[1] - sizes[0]) / (high - low)) if high > low else None
    finally:
        if started_hdfs:
            subprocess.run([os.path.join(ROOT, ".ci", "engines", "hdfs.sh"), "stop", started_hdfs])
    return {"users": users, "sizes": sizes, "runners": results}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument("--workdir", help="keep data, model and outputs here (default: a temp dir, removed)")
    parser.add_argument("--hdfs", help='a running HDFS, "HOST RPC_PORT HTTP_PORT" (default: start one)')
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="engines-bench-")
    os.makedirs(workdir, exist_ok=True)
    try:
        result = run(args.users, workdir, args.hdfs, args.repeats)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
