"""Saved model directories: checksums recorded at save time, and every kind of edited or broken directory refused
at load with one error naming the file and the first mismatch."""

from __future__ import annotations

import json
import pathlib
import shutil
import zipfile

import jax
import numpy as np
import pytest

from stellarfm_jax import pretrained, resolve_model
from stellarfm_jax.cli import BadFileError, MissingFileError
from stellarfm_jax.config import ModelConfig
from stellarfm_jax.formats import params_sha256, sha256_file
from stellarfm_jax.inference import StellarModel
from stellarfm_jax.nn.model import StellarPerceptron, init_params
from stellarfm_jax.saved_model import (SHIPPED_MODELS_DIR, config_sha256, expected_param_shapes, load_model,
                                       resolve_model_dir, save_model)
from stellarfm_jax.synthetic import synthetic_vocabulary

CONFIG = ModelConfig(embedding_dim=16, encoder_heads=4, encoder_dense=32, decoder_heads=4, decoder_dense=64,
                     dropout=0.0, context_length=16)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    vocab = synthetic_vocabulary(8)
    params = jax.device_get(init_params(StellarPerceptron(CONFIG, vocab.size), jax.random.key(3)))
    path = save_model(tmp_path_factory.mktemp("saved") / "model", params, CONFIG, vocab,
                      {"config": {"model": {**CONFIG.__dict__}}})
    return path, params, vocab


def copy(saved, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(saved[0], tmp_path / "copy"))


def edit_json(path: pathlib.Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))


def rewrite_params(path: pathlib.Path, edit) -> None:
    with np.load(path / "params.npz") as npz:
        flat = {k: npz[k] for k in npz.files}
    edit(flat)
    np.savez(path / "params.npz", **flat)


def test_save_records_checksums_and_load_round_trips(saved):
    path, params, vocab = saved
    doc = json.loads((path / "model.json").read_text())
    assert doc["checksums"] == {"params": params_sha256(params), "model": config_sha256(CONFIG),
                                "vocab": sha256_file(path / "vocab.json")}
    loaded, config, loaded_vocab, meta = load_model(path)
    assert config == CONFIG and loaded_vocab.equals(vocab)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_expected_shapes_are_the_initialised_tree(saved):
    _, params, vocab = saved
    flat = {"/".join(str(k.key) for k in keys): leaf.shape
            for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert expected_param_shapes(CONFIG, vocab.size) == flat


@pytest.mark.parametrize("key, value, message", [
    ("encoder_blocks", 1, r"unexpected array 'encoder_blocks_1/"),  # a block the config no longer builds
    ("encoder_blocks", 3, r"array 'encoder_blocks_2/.*' .*is missing"),
    ("decoder_dense", 32, r"array 'decoder_blocks_0/.*' has shape .* needs"),  # head / dense width
    ("embedding_dim", 8, r"has shape .* needs"),
])
def test_an_edited_architecture_is_refused_naming_the_first_mismatching_array(saved, tmp_path, key, value, message):
    path = copy(saved, tmp_path)
    edit_json(path / "model.json", lambda d: d["model"].update({key: value}))
    with pytest.raises(BadFileError, match=message) as err:
        load_model(path)
    assert str(path / "params.npz") in str(err.value)


def test_an_edited_context_length_is_refused(saved, tmp_path):
    # context_length changes no parameter shape: the architecture checksum catches it, and names the key.
    path = copy(saved, tmp_path)
    edit_json(path / "model.json", lambda d: d["model"].update(context_length=8))
    with pytest.raises(BadFileError, match=r"model.json: the model config is not the one saved.*context_length"):
        load_model(path)


def test_compute_dtype_may_be_changed(saved, tmp_path):
    path = copy(saved, tmp_path)
    edit_json(path / "model.json", lambda d: d["model"].update(compute_dtype="bfloat16"))
    assert load_model(path)[1].compute_dtype == "bfloat16"


def test_an_extra_array_is_refused(saved, tmp_path):
    path = copy(saved, tmp_path)
    rewrite_params(path, lambda flat: flat.update({"extra/kernel": np.zeros((2, 2), np.float32)}))
    with pytest.raises(BadFileError, match=r"unexpected array 'extra/kernel' \(shape \(2, 2\)\)"):
        load_model(path)


def test_a_nan_parameter_is_refused(saved, tmp_path):
    path = copy(saved, tmp_path)

    def poison(flat):
        flat["embedding/embeddings"] = flat["embedding/embeddings"].copy()
        flat["embedding/embeddings"][3, 2] = np.nan

    rewrite_params(path, poison)
    with pytest.raises(BadFileError, match=r"'embedding/embeddings' holds 1 non-finite value"):
        load_model(path)


def test_changed_parameter_values_are_refused_by_the_checksum(saved, tmp_path):
    path = copy(saved, tmp_path)
    rewrite_params(path, lambda flat: flat.update({"embedding/embeddings": flat["embedding/embeddings"] * 1.01}))
    with pytest.raises(BadFileError, match=r"params.npz: the parameters' sha256 differs"):
        load_model(path)


def test_an_edited_vocabulary_is_refused(saved, tmp_path):
    path = copy(saved, tmp_path)
    edit_json(path / "vocab.json", lambda d: d["scale"].__setitem__(0, 2.0 * d["scale"][0]))
    with pytest.raises(BadFileError, match=r"vocab.json: its sha256 differs"):
        load_model(path)


def test_a_truncated_params_file_is_one_error_naming_it(saved, tmp_path):
    path = copy(saved, tmp_path)
    data = (path / "params.npz").read_bytes()
    (path / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadFileError, match=r"params.npz: cannot read the parameters .*truncated"):
        load_model(path)
    assert zipfile.is_zipfile(saved[0] / "params.npz")  # the original is untouched


def test_a_directory_without_checksums_still_loads(saved, tmp_path):
    path = copy(saved, tmp_path)
    edit_json(path / "model.json", lambda d: d.pop("checksums"))
    assert load_model(path)[1] == CONFIG


def test_the_shipped_model_verifies_and_its_parameters_are_unchanged():
    path = SHIPPED_MODELS_DIR / "small"
    params, config, vocab, _ = load_model(path)  # checksums present and verified
    doc = json.loads((path / "model.json").read_text())
    assert doc["checksums"]["params"] == params_sha256(params)
    assert pretrained("small").vocab.equals(vocab)


def test_resolve_model_accepts_a_directory_a_workdir_and_a_shipped_name(saved, tmp_path):
    path = saved[0]
    workdir = tmp_path / "run"
    shutil.copytree(path, workdir / "model")
    assert resolve_model_dir(path) == path and resolve_model_dir(workdir) == workdir / "model"
    assert resolve_model_dir("small") == SHIPPED_MODELS_DIR / "small"
    assert isinstance(resolve_model(workdir), StellarModel)
    # a notebook's StellarModel.load reads the same names as every command's --model
    by_name = StellarModel.load("small")
    assert by_name.vocab.equals(pretrained("small").vocab)
    assert params_sha256(jax.device_get(by_name.params)) == params_sha256(load_model(SHIPPED_MODELS_DIR / "small")[0])
    with pytest.raises(MissingFileError, match="no shipped model of that name"):
        resolve_model_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="neither a stellarfm_jax model directory"):
        resolve_model_dir(tmp_path / "empty")


def test_predict_reports_an_edited_model_as_one_error_line(saved, tmp_path, capsys):
    from stellarfm_jax.predict import main

    path = copy(saved, tmp_path)
    edit_json(path / "model.json", lambda d: d["model"].update(encoder_blocks=1))
    (tmp_path / "in.csv").write_text("s0,s1\n1.0,2.0\n")
    rc = main(["--model", str(path), "--input", str(tmp_path / "in.csv"), "--request", "teff", "--output",
               str(tmp_path / "out.csv"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "unexpected array" in err
    assert not (tmp_path / "out.csv").exists()
