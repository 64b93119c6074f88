"""The Beam options of a run, resolved and checked without submitting anything (``run --dry-run``).

``check_runner_options`` does what the runner would do at submission, offline: it resolves the
runner by name (which also registers its own options, e.g. FlinkRunnerOptions), parses the
config's ``runner.options`` and the extra arguments into ``PipelineOptions``, reports options
that no registered options class defines (Beam itself only logs and drops them), and runs
Beam's own ``PipelineOptionsValidator`` for that runner (for Dataflow: project id, region,
gs:// temp and staging locations). On top of that it checks what Beam leaves to the workers
to find out: that the workers get this package (``--setup_file`` exists, or a container image
is given), that the portable environment type and config fit together, and that the data
paths are ones the remote workers can read.

It also says which of the job's paths this machine cannot open (no Beam file system for
``gs://`` without ``apache-beam[gcp]``, for ``hdfs://`` without the ``hdfs`` package): the
launcher reads the model signature, the input footers and the output directory through
them, so a dry run skips those checks and says so, and a real run cannot start from here.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (GoogleCloudOptions, HadoopFileSystemOptions, PipelineOptions,
                                                  PortableOptions, SetupOptions, TestOptions,
                                                  WorkerOptions, _BeamArgumentParser)
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

from pipeline.config import ExportConfig

__all__ = ["OptionsCheck", "check_runner_options", "fill_placeholder_options", "unreachable_paths",
           "format_options_check", "job_paths", "launch_notice"]

_ENVIRONMENT_TYPES = ("DOCKER", "PROCESS", "EXTERNAL", "LOOPBACK")
_LOCAL_FLINK_MASTERS = ("[local]", "[auto]")


@dataclass
class OptionsCheck:
    """What ``check_runner_options`` found.

    Args:
      runner: the runner name as configured.
      options: {options class: {option: value}} of every option given or not at its default,
        after Beam's validation filled in what it derives (e.g. staging_location).
      errors: problems that stop the run anywhere.
      notes: things this machine could not check, and advice.
    """
    runner: str
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    errors: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _flag_name(option: str) -> str:
    return option.split("=", 1)[0]


def fill_placeholder_options(config: ExportConfig, beam_args: Sequence[str]) -> ExportConfig:
    """The config without the ``runner.options`` entries that still hold a <PLACEHOLDER> and that
    an extra Beam argument of the same name replaces (``-- --project=my-project``)."""
    given = {_flag_name(a) for a in beam_args if a.startswith("--")}
    kept = [o for o in config.runner.options if not ("<" in o and ">" in o and _flag_name(o) in given)]
    if len(kept) == len(config.runner.options):
        return config
    return config.model_copy(update={"runner": config.runner.model_copy(update={"options": kept})})


def job_paths(config: ExportConfig) -> List[Tuple[str, str]]:
    """(config key, path) of every path the launcher and the workers open."""
    return [("input.path", config.input.path), ("model.path", config.model.path),
            ("output.path", config.output.path)]


def unreachable_paths(config: ExportConfig) -> List[str]:
    """'key path: why' for each job path that has no Beam file system on this machine."""
    problems = []
    for key, path in job_paths(config):
        try:
            FileSystems.get_filesystem(path)
        except Exception as err:  # ValueError (unknown scheme) or BeamIOError (missing package)
            problems.append(f"{key} {path}: {_short_fs_error(err)}")
    return problems


def _short_fs_error(err: Exception) -> str:
    text = str(err)
    if "apache-beam[gcp]" in text or "gs://" in text:
        return "no gs:// file system here (pip install -c constraints.txt 'apache-beam[gcp]')"
    if "hdfs" in text.lower():
        return ("no hdfs:// file system here (pip install hdfs, Beam's 'hadoop' extra, and set "
                "--hdfs_host/--hdfs_port)")
    return text


@contextmanager
def _quiet(*names: str):
    """Beam logs (and then drops) unknown options and validation errors; we report them ourselves."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _all_option_classes() -> List[type]:
    seen, todo = [], [PipelineOptions]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def _option_owners() -> Dict[str, str]:
    """{option dest: name of the options class that defines it}."""
    owners: Dict[str, str] = {}
    for cls in _all_option_classes():
        parser = _BeamArgumentParser(allow_abbrev=False)
        try:
            cls._add_argparse_args(parser)
        except (argparse.ArgumentError, TypeError, AttributeError):
            continue
        for action in parser._actions:
            if action.dest != "help":
                owners.setdefault(action.dest, cls.__name__)
    return owners


def _is_local(path: str) -> bool:
    return "://" not in path


def check_runner_options(config: ExportConfig, beam_args: Sequence[str] = ()) -> OptionsCheck:
    """Resolve and validate the run's Beam options for its runner; nothing is submitted."""
    from apache_beam.runners.runner import create_runner

    name = config.runner.name
    check = OptionsCheck(runner=name)
    try:
        runner = create_runner(name)
    except ValueError as err:
        check.errors.append(f"runner.name: {err}")
        return check
    flags = [f"--runner={name}", *config.runner.options, *beam_args]
    with _quiet("apache_beam.options.pipeline_options", "apache_beam.options.pipeline_options_validator"):
        options = PipelineOptions(flags)
        known = options.get_all_options(drop_default=True)
        every = options.get_all_options(drop_default=True, retain_unknown_options=True)
        for unknown in sorted(set(every) - set(known)):
            check.errors.append(f"--{unknown}: not an option of Beam or of {name} (a misspelt option is "
                                "ignored by Beam and the run would go ahead without it)")
        # Before Beam's validator, which quietly replaces some values (a bad temp_location by the
        # staging location, for one).
        runner_type = type(runner).__name__
        if runner_type in ("DataflowRunner", "TestDataflowRunner"):
            _check_dataflow(config, options, check)
        elif runner_type in ("FlinkRunner", "PortableRunner", "SparkRunner", "PrismRunner"):
            _check_portable(config, options, runner_type, check)
        # dry_run keeps the validator off the network (bucket soft-delete checks).
        options.view_as(TestOptions).dry_run = True
        check.errors.extend(PipelineOptionsValidator(options, runner).validate())
        # What was given (even if equal to Beam's default) and what differs from the defaults.
        given = {_flag_name(f)[2:] for f in flags if f.startswith("--")}
        changed = options.get_all_options(drop_default=True)
        resolved = {k: v for k, v in options.get_all_options().items() if k in given or k in changed}
    owners = _option_owners()
    resolved.pop("dry_run", None)
    for dest, value in resolved.items():
        check.options.setdefault(owners.get(dest, "other"), {})[dest] = value
    return check


def _check_dataflow(config: ExportConfig, options: PipelineOptions, check: OptionsCheck) -> None:
    setup = options.view_as(SetupOptions)
    image = options.view_as(WorkerOptions).sdk_container_image
    if setup.setup_file:
        if not os.path.isfile(setup.setup_file):
            check.errors.append(f"--setup_file {setup.setup_file}: no such file (relative to {os.getcwd()}); "
                                "launch from the repository root")
        elif os.path.basename(setup.setup_file) != "setup.py":
            check.errors.append(f"--setup_file {setup.setup_file}: Beam stages the package by running this "
                                "file as setup.py; point it at the project's setup.py")
    elif not image:
        check.errors.append("neither --setup_file nor --sdk_container_image: Dataflow workers would not have "
                            "this package (pass --setup_file=./setup.py, or an image with it installed)")
    for key, path in job_paths(config):
        if _is_local(path):
            check.errors.append(f"{key} {path} is a local path: Dataflow workers cannot read it; use gs://")
    cloud = options.view_as(GoogleCloudOptions)
    if cloud.temp_location and not cloud.temp_location.startswith("gs://"):
        check.errors.append(f"--temp_location {cloud.temp_location}: Dataflow needs a gs:// location")


def _check_portable(config: ExportConfig, options: PipelineOptions, runner_type: str, check: OptionsCheck) -> None:
    portable = options.view_as(PortableOptions)
    env_type = (portable.environment_type or "DOCKER").upper()
    env_config = portable.environment_config
    if env_type not in _ENVIRONMENT_TYPES and "." not in env_type:  # a URN-like custom type is Beam's business
        check.errors.append(f"--environment_type {portable.environment_type}: expected one of "
                            f"{', '.join(_ENVIRONMENT_TYPES)}")
    if env_type == "PROCESS" and env_config:
        try:
            parsed = json.loads(env_config)
        except ValueError as err:
            check.errors.append(f"--environment_config {env_config}: not JSON ({err}); PROCESS takes "
                                '{"command": "/path/to/boot"}')
        else:
            if not isinstance(parsed, dict) or not parsed.get("command"):
                check.errors.append(f"--environment_config {env_config}: PROCESS needs a \"command\" (the SDK "
                                    "worker boot binary on every worker host)")
    if env_type == "EXTERNAL" and not (env_config or portable.lookup_environment_option("external_service_address")):
        check.errors.append("--environment_type EXTERNAL needs --environment_config=HOST:PORT of the worker pool")
    if runner_type == "PortableRunner" and not portable.job_endpoint:
        check.errors.append("PortableRunner needs --job_endpoint=HOST:PORT (a running job server) or "
                            "--job_endpoint=embed")
    if env_type == "LOOPBACK":
        check.notes.append("--environment_type=LOOPBACK runs the SDK harness in the launching process: "
                           "local testing only")
    remote = True
    if runner_type == "FlinkRunner":
        remote = options.get_all_options().get("flink_master") not in (*_LOCAL_FLINK_MASTERS, None)
    if runner_type == "PortableRunner":
        remote = portable.job_endpoint not in (None, "embed") and env_type != "LOOPBACK"
    if remote:
        for key, path in job_paths(config):
            if _is_local(path):
                check.errors.append(f"{key} {path} is a local path: the cluster's workers cannot read it "
                                    "(and finalize renames files in it); use hdfs://, gs:// or s3://")
    if any(p.startswith("hdfs://") for _, p in job_paths(config)):
        hdfs = options.view_as(HadoopFileSystemOptions)
        if not hdfs.hdfs_host:
            check.errors.append("hdfs:// paths need --hdfs_host (and --hdfs_port, --hdfs_user) for Beam's "
                                "WebHDFS file system")


def format_options_check(check: OptionsCheck) -> str:
    """The resolved options, one per line, grouped by their options class."""
    lines = [f"beam:    {check.runner}: options resolved and validated, nothing submitted"]
    for owner in sorted(check.options):
        for dest, value in sorted(check.options[owner].items()):
            shown = json.dumps(value) if isinstance(value, (dict, list)) else value
            lines.append(f"  {owner + '.' + dest:<44} {shown}")
    return "\n".join(lines)


def launch_notice(result: Any, options: PipelineOptions) -> Optional[str]:
    """The line that tells where a submitted remote job runs, or None for a local run.

    Dataflow: its job id and the console URL, which Beam logs only at INFO (``DataflowRunner``'s
    result has ``job_id()``; a template run, with no job, has None).
    """
    job_id = getattr(result, "job_id", None)
    if not callable(job_id):
        return None
    try:
        job = job_id()
    except Exception:  # a result without a job (e.g. a template run)
        return None
    if not job:
        return None
    gcp = options.view_as(GoogleCloudOptions)
    url = (f"https://console.cloud.google.com/dataflow/jobs/{gcp.region}/{job}"
           f"?project={gcp.project}")
    return f"embedding-export: Dataflow job {job} submitted; console: {url}"
