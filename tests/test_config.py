import pytest

from pipeline.config import ConfigError, load_config, parse_config


def test_local_config_loads_with_overrides():
    cfg = load_config("run_configs/local.yaml", ["partition.num_shards=4", "output.format=block"])
    assert cfg.partition.num_shards == 4
    assert cfg.output.format == "block"
    assert cfg.model.embedding_output == "embedding"
    assert cfg.model.inputs["sparse_ids"].length == 16


def test_unknown_and_invalid_keys_are_named():
    with pytest.raises(ConfigError) as err:
        load_config("run_configs/local.yaml", ["output.fromat=x", "model.batch_size=-1"])
    text = str(err.value)
    assert "output.fromat: unknown key" in text
    assert "model.batch_size" in text and "greater than 0" in text


def test_missing_section_and_partition_column():
    with pytest.raises(ConfigError, match="model: required key is missing"):
        parse_config({"input": {"path": "x"}, "output": {"path": "y"}})
    with pytest.raises(ConfigError, match="partition.column is not set"):
        load_config("run_configs/local.yaml", ["partition.by=column"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read run config .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
