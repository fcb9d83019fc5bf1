"""Configs: the built-in ones ship inside the package; every key is validated before anything runs."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import pytest

from stellarfm_jax.cli import BadConfigError, MissingFileError
from stellarfm_jax.config import Config, ModelConfig, TrainConfig, apply_overrides, load_config
from stellarfm_jax.configs import BUILTIN

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_configs_load_from_the_package_and_the_examples_reexport_them(name):
    import importlib

    module = importlib.import_module(f"stellarfm_jax.configs.{name}")
    assert pathlib.Path(module.__file__).parent == REPO / "stellarfm_jax" / "configs"
    config = load_config(name)
    assert isinstance(config, Config) and config.name == name
    example = REPO / "configs" / f"{name}.py"
    if example.is_file():  # the repository's examples (not in a wheel)
        assert load_config(str(example)) == config


def test_a_config_file_must_build_a_config(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return {'model': {}}\n")
    with pytest.raises(BadConfigError, match=r"get_config\(\) in .*bad.py returned a dict, expected a "
                                             r"stellarfm_jax.config.Config"):
        load_config(str(bad))
    none = tmp_path / "none.py"
    none.write_text("x = 1\n")
    with pytest.raises(BadConfigError, match="must define get_config"):
        load_config(str(none))
    with pytest.raises(MissingFileError, match="not a built-in config name"):
        load_config("smal")


# key=value override -> the key the message must name, and what it must say about the valid range
BAD_OVERRIDES = [
    ("train.learning_rate=nan", "train.learning_rate", "finite number > 0"),
    ("train.learning_rate=inf", "train.learning_rate", "finite number > 0"),
    ("train.learning_rate=-0.001", "train.learning_rate", "finite number > 0"),
    ("train.learning_rate=0", "train.learning_rate", "finite number > 0"),
    ("train.weight_decay=nan", "train.weight_decay", "finite number >= 0"),
    ("train.weight_decay=-0.01", "train.weight_decay", "finite number >= 0"),
    ("train.weight_decay=inf", "train.weight_decay", "finite number >= 0"),
    ("train.min_learning_rate=1", "train.min_learning_rate", "must not exceed train.learning_rate"),
    ("train.checkpoint_every_epochs=0", "train.checkpoint_every_epochs", ">= 1"),
    ("train.eval_every_epochs=0", "train.eval_every_epochs", ">= 1"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints", ">= 1"),
    ("train.val_max_stars=0", "train.val_max_stars", ">= 1"),
    ("train.batch_size=0", "train.batch_size", ">= 1"),
    ("train.micro_batch_size=-1", "train.micro_batch_size", ">= 0"),
    ("train.max_padding=17", "train.max_padding", "must not exceed model.context_length"),
    ("model.embedding_dim=0", "model.embedding_dim", ">= 1"),
    ("model.context_length=0", "model.context_length", ">= 1"),
    ("model.encoder_heads=3", "model.encoder_heads", "dividing embedding_dim=16"),
    ("model.decoder_heads=32", "model.decoder_heads", "dividing embedding_dim=16"),
    ("model.decoder_dense=4", "model.decoder_dense", ">= 8"),
    ("model.encoder_blocks=0", "model.encoder_blocks", ">= 1"),
    ("model.dropout=1.0", "model.dropout", "[0, 1)"),
    ("model.compute_dtype=float16", "model.compute_dtype", "'float32' or 'bfloat16'"),
]


@pytest.mark.parametrize("override, key, expected", BAD_OVERRIDES)
def test_out_of_range_values_are_refused_naming_the_key_and_the_range(override, key, expected):
    with pytest.raises(BadConfigError) as err:
        apply_overrides(load_config("tiny"), [override])
    assert key in str(err.value) and expected in str(err.value), str(err.value)


def test_wrong_types_from_a_config_file_are_refused():
    good = load_config("tiny")
    with pytest.raises(BadConfigError, match=r"model.embedding_dim must be int, got 16.0"):
        dataclasses.replace(good, model=dataclasses.replace(good.model, embedding_dim=16.0)).validate()
    with pytest.raises(BadConfigError, match=r"train.epochs must be int, got True"):
        dataclasses.replace(good, train=dataclasses.replace(good.train, epochs=True)).validate()
    with pytest.raises(BadConfigError, match=r"config.train must be a TrainConfig, got dict"):
        dataclasses.replace(good, train={"epochs": 3}).validate()
    # an int where a float is declared is fine
    assert dataclasses.replace(good, train=dataclasses.replace(good.train, learning_rate=1)).validate()


def test_defaults_and_every_builtin_are_valid():
    assert Config().validate() == Config()
    for name in BUILTIN:
        load_config(name).validate()
    assert math.isfinite(TrainConfig().learning_rate) and ModelConfig().context_length >= 1


def test_the_train_command_refuses_a_bad_config_before_reading_data_or_training(tmp_path, capsys):
    from stellarfm_jax.train import main

    work = tmp_path / "run"
    # no --data: a valid config would go on to the embedded data set; the bad value stops it first
    rc = main(["--config", "tiny", "--workdir", str(work), "--set", "train.learning_rate=nan", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "error: train.learning_rate must be a finite number > 0, got nan\n"
    assert not work.exists()
