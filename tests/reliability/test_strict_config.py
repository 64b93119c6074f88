"""Strict config types: a value of the wrong type is refused before anything runs, naming the key.

YAML turns ``true`` into a bool and ``1.5`` into a float; a lax schema would coerce ``num_shards:
true`` to 1 shard and ``max_reject_fraction: true`` to 1.0 (every row may be rejected and the
export still succeeds). Every key takes exactly its own type.
"""
import pytest

from pipeline.cli import main as cli_main
from pipeline.config import ConfigError, load_config
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import FIGURES, write_config

pytestmark = pytest.mark.timeout(120)

CASES = FIGURES.setdefault("config values of the wrong type refused", [])

WRONG = [
    ("partition.num_shards=true", "partition.num_shards"),
    ("partition.num_shards=16.0", "partition.num_shards"),
    ("partition.num_shards='16'", "partition.num_shards"),
    ("output.max_reject_fraction=true", "output.max_reject_fraction"),
    ("output.max_reject_fraction='0.1'", "output.max_reject_fraction"),
    ("model.batch_size=false", "model.batch_size"),
    ("output.overwrite=1", "output.overwrite"),
    ("output.overwrite=yes_please", "output.overwrite"),
    ("output.records_per_block=2.5", "output.records_per_block"),
    ("input.path=17", "input.path"),
    ("model.intra_op_threads=true", "model.intra_op_threads"),
    ("model.inputs.sparse_ids.pad=false", "model.inputs.sparse_ids.pad"),
    ("model.inputs.sparse_ids.length=true", "model.inputs.sparse_ids.length"),
    ("output.key_feature=12", "output.key_feature"),
    ("runner.options=[1]", "runner.options.0"),
]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("strict")
    write_users(str(root / "in"), 40, files=1)
    cfg = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(root / "out"), num_shards=2)
    return write_config(cfg, str(root / "c.yaml")), root


@pytest.mark.parametrize("override,key", WRONG)
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(config_path, override, key):
    path, _ = config_path
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert f"  {key}: " in str(err.value), str(err.value)
    CASES.append(override)


def test_the_right_types_still_load(config_path):
    path, _ = config_path
    cfg = load_config(path, ["partition.num_shards=3", "output.max_reject_fraction=0", "output.overwrite=true",
                             "output.max_reject_fraction=0.5", "model.batch_size=64"])
    assert (cfg.partition.num_shards, cfg.output.max_reject_fraction, cfg.output.overwrite) == (3, 0.5, True)
    assert isinstance(cfg.output.max_reject_fraction, float)


def test_the_command_line_refuses_a_bool_shard_count_and_writes_nothing(config_path, capsys):
    path, root = config_path
    for override in ("partition.num_shards=true", "output.max_reject_fraction=true"):
        assert cli_main(["run", "--config", path, "--set", override]) == 2
        err = capsys.readouterr().err
        assert override.split("=")[0] in err and "valid" in err, err
    assert not (root / "out").exists()
