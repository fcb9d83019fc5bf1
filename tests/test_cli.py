"""The command lines: user errors as one line (bugs keep their traceback), shared arguments and help texts,
missing extras, the workdir lock, and predict's file handling (shipped model names, output == input, BOM,
header-only and malformed CSV headers)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from stellarfm_jax import cli
from stellarfm_jax.data import write_dataset
from stellarfm_jax.formats import read_lock, workdir_lock
from stellarfm_jax.synthetic import make_synthetic_dataset

COMMANDS = ["train", "evaluate", "predict", "finetune_search", "finetune_tokens", "convert"]


# ------------------------------------------------------------------------------------------------ errors
def test_user_errors_keep_the_builtin_types_callers_catch():
    assert issubclass(cli.BadInputError, ValueError) and issubclass(cli.BadFileError, ValueError)
    assert issubclass(cli.MissingFileError, FileNotFoundError) and issubclass(cli.MissingExtraError, ImportError)
    assert issubclass(cli.WorkdirLockedError, RuntimeError) and issubclass(cli.BadConfigError, cli.BadInputError)
    from stellarfm_jax.vocab import UnknownTokenError

    assert issubclass(UnknownTokenError, cli.UserError) and issubclass(UnknownTokenError, KeyError)


def test_run_command_reports_user_errors_in_one_line(capsys):
    def bad():
        raise cli.BadInputError("--x must be >= 1, got 0")

    assert cli.run_command(bad) == 2
    assert capsys.readouterr().err == "error: --x must be >= 1, got 0\n"

    def missing():
        open("/nonexistent/stars.csv")

    assert cli.run_command(missing) == 2
    assert capsys.readouterr().err == "error: no such file or directory: /nonexistent/stars.csv\n"
    assert cli.run_command(lambda: None) == 0 and cli.run_command(lambda: 130) == 130


@pytest.mark.parametrize("bug", [KeyError("deviation"), RuntimeError("internal"), OSError("disk"), ValueError("x")])
def test_run_command_lets_bugs_keep_their_traceback(bug):
    def work():
        raise bug

    with pytest.raises(type(bug)):
        cli.run_command(work)


def test_a_missing_optional_dependency_names_the_extra_and_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "astropy", None)  # import astropy -> ModuleNotFoundError
    with pytest.raises(cli.MissingExtraError, match=r"'astropy' \(the 'data' extra\).*pip install -e \"\.\[data\]\""):
        cli.data_path(None)

    def work():
        import astropy  # noqa: F401

    assert cli.run_command(work) == 2
    err = capsys.readouterr().err
    assert "the 'data' extra" in err and 'from a clone of the repository: pip install -e ".[data]"' in err
    monkeypatch.setitem(sys.modules, "xgboost", None)
    with pytest.raises(cli.MissingExtraError, match=r"the 'eval' extra"):
        cli.require("xgboost", "the experts")

    def other():
        import not_an_extra_module  # noqa: F401

    with pytest.raises(ModuleNotFoundError):  # not an extra of ours: a bug, with its traceback
        cli.run_command(other)


def test_train_without_the_data_extra_says_which_extra(monkeypatch, tmp_path, capsys):
    from stellarfm_jax.train import main

    monkeypatch.setitem(sys.modules, "astropy", None)
    assert main(["--config", "tiny", "--workdir", str(tmp_path / "w"), "--no-progress"]) == 2
    assert 'pip install -e ".[data]"' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ help texts
def help_text(command: str, capsys) -> str:
    import importlib

    module = importlib.import_module(f"stellarfm_jax.{command}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS + ["data"])
def test_help_is_plain_text_with_defaults_and_no_internal_references(command, capsys):
    text = help_text(command if command != "data" else "data.__main__", capsys)
    assert f"python -m stellarfm_jax.{command}" in text
    for markup in ("``", ":func:", ":class:", ":mod:", ":data:", "DESIGN", "§", "issue #", "original_spec"):
        assert markup not in text, (command, markup)
    if command != "data":
        assert "(default:" in text
    if command in ("evaluate", "predict", "finetune_search", "finetune_tokens"):
        assert "name of a model shipped with the package (small)" in " ".join(text.split())  # the one --model help


# ------------------------------------------------------------------------------------------------ workdir lock
HOLD = ("import sys, time\nfrom stellarfm_jax.formats import workdir_lock\n"
        "with workdir_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


def hold_lock(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    work = tmp_path / "run"
    proc = hold_lock(work)
    try:
        assert read_lock(work)["pid"] == proc.pid
        with pytest.raises(cli.WorkdirLockedError, match=rf"in use by another run \(pid {proc.pid} on host"):
            with workdir_lock(work):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)  # as a kill -9: no clean-up runs
        proc.wait()
    assert read_lock(work)["pid"] == proc.pid  # the dead process's record is still there
    messages = []
    with workdir_lock(work, log=messages.append) as record:
        assert record["pid"] == os.getpid() and read_lock(work)["pid"] == os.getpid()
    assert len(messages) == 1 and f"left by pid {proc.pid}" in messages[0] and "no longer running" in messages[0]
    assert read_lock(work) is None  # a clean exit leaves no holder
    with workdir_lock(work, log=messages.append):  # and the next run takes it silently
        pass
    assert len(messages) == 1


def test_the_train_command_refuses_a_workdir_in_use(tmp_path, capsys):
    from stellarfm_jax.train import main

    data = write_dataset(tmp_path / "syn.h5", make_synthetic_dataset(300, seed=1))
    work = tmp_path / "run"
    proc = hold_lock(work)
    try:
        rc = main(["--config", "tiny", "--workdir", str(work), "--data", str(data), "--no-progress"])
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert rc == 2 and f"pid {proc.pid}" in err and err.count("\n") == 1
    assert not (work / "checkpoints").exists() and not (work / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------------------ predict files
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import jax

    from stellarfm_jax.config import ModelConfig
    from stellarfm_jax.inference import StellarModel
    from stellarfm_jax.nn.model import StellarPerceptron, init_params

    cfg = ModelConfig(embedding_dim=16, encoder_heads=4, encoder_dense=32, decoder_heads=4, decoder_dense=64,
                      dropout=0.0, context_length=16)
    vocab = make_synthetic_dataset(200, seed=2).vocab
    params = init_params(StellarPerceptron(cfg, vocab.size), jax.random.key(0))
    return StellarModel.from_params(params, cfg, vocab).save(tmp_path_factory.mktemp("m") / "model")


def predict(model_dir, inp, out, *extra):
    from stellarfm_jax.predict import main

    return main(["--model", str(model_dir), "--input", str(inp), "--request", "teff", "--output", str(out),
                 "--no-progress", *extra])


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_output_equal_to_input_is_refused_by_path_and_by_inode(model_dir, tmp_path, capsys):
    inp = tmp_path / "stars.csv"
    text = "s0,s1\n1.0,2.0\n"
    inp.write_text(text)
    link = tmp_path / "same_inode.csv"
    os.link(inp, link)
    for out in (inp, tmp_path / "." / "stars.csv", link):
        assert predict(model_dir, inp, out) == 2
        assert "is the input file" in capsys.readouterr().err
    assert inp.read_text() == text


def test_a_utf8_bom_header_is_read_as_token_names(model_dir, tmp_path):
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text("s0,s1\n1.0,2.0\n0.5,0.7\n")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert predict(model_dir, plain, tmp_path / "a.csv") == 0 and predict(model_dir, bom, tmp_path / "b.csv") == 0
    assert rows(tmp_path / "a.csv") == rows(tmp_path / "b.csv") and len(rows(tmp_path / "a.csv")) == 3


def test_a_header_only_csv_gives_a_header_only_output(model_dir, tmp_path, capsys):
    inp = tmp_path / "empty.csv"
    inp.write_text("source_id,s0,s1\n")
    assert predict(model_dir, inp, tmp_path / "out.csv") == 0
    assert rows(tmp_path / "out.csv") == [["source_id", "teff", "teff_error", "prior_only", "n_out_of_range"]]
    assert "for 0 stars" in capsys.readouterr().out
    import h5py

    assert predict(model_dir, inp, tmp_path / "out.h5") == 0
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert sorted(f) == sorted(["source_id", "teff", "teff_error", "prior_only", "n_out_of_range"])
        assert f["teff"].shape == (0,)


@pytest.mark.parametrize("header, message", [
    ("s0,,s1", "column 2 of the header has no name"),
    ("s0,s1,s0", "column 's0' appears twice in the header (columns 1 and 3)"),
])
def test_malformed_headers_are_refused(model_dir, tmp_path, capsys, header, message):
    inp = tmp_path / "bad.csv"
    inp.write_text(header + "\n1,2,3\n")
    assert predict(model_dir, inp, tmp_path / "out.csv") == 2
    err = capsys.readouterr().err
    assert message in err and str(inp) in err and not (tmp_path / "out.csv").exists()


def test_boolean_cells_are_refused(model_dir, tmp_path, capsys):
    inp = tmp_path / "bool.csv"
    inp.write_text("s0,s1\nTrue,2.0\n")
    assert predict(model_dir, inp, tmp_path / "out.csv") == 2
    assert "boolean value 'True' in column 's0', data row 1" in capsys.readouterr().err


def test_predict_accepts_a_shipped_model_name_as_a_command(tmp_path):
    from stellarfm_jax import pretrained

    model = pretrained("small")
    flux = [n for n in model.vocab.group_names("spectrum")][:20]
    values = np.asarray(model.vocab.centre)[np.asarray(model.vocab.ids(flux)) - 1]
    inp = tmp_path / "stars.csv"
    inp.write_text(",".join(["source_id"] + flux) + "\n" + ",".join(["7"] + [repr(float(v)) for v in values]) + "\n")
    out = tmp_path / "pred.csv"
    proc = subprocess.run([sys.executable, "-m", "stellarfm_jax.predict", "--model", "small", "--input", str(inp),
                           "--request", "teff,logg", "--output", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = rows(out)
    assert table[0][:3] == ["source_id", "teff", "logg"] and table[1][0] == "7"
    expected = model.perceive(values[None, :], flux).request(["teff", "logg"])
    np.testing.assert_allclose(float(table[1][1]), expected["teff"][0], rtol=1e-6)



def test_set_is_offered_where_a_config_exists(tmp_path, capsys):
    from stellarfm_jax import finetune_search, finetune_tokens
    from stellarfm_jax.config import apply_overrides

    settings = apply_overrides(finetune_search.SearchRun(), ["train.temperature=0.1", "head.projection_dim=32"])
    assert settings.train.temperature == 0.1 and settings.head.projection_dim == 32
    base = ["--model", "small", "--out", str(tmp_path / "o")]
    assert finetune_search.main(base + ["--set", "train.temprature=1"]) == 2  # refused before any work
    assert "unknown config key 'train.temprature'" in capsys.readouterr().err
    assert finetune_search.main(base + ["--set", "train.batch_size=1"]) == 2
    assert "batch_size must be >= 2" in capsys.readouterr().err
    assert finetune_tokens.main(base + ["--tokens", "alpha_m", "--set", "rank=0"]) == 2
    assert "rank must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
