"""A regular (non-editable) install works: build a wheel from the repository, install it into a fresh virtual
environment (dependencies from this environment, nothing downloaded) and train ``--config tiny`` from another
directory. The built-in configs and the shipped model must be inside the wheel."""

from __future__ import annotations

import json
import pathlib
import shutil
import site
import subprocess
import sys
import zipfile

from stellarfm_jax.data import write_dataset
from stellarfm_jax.synthetic import make_synthetic_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_a_wheel_installed_elsewhere_trains_the_tiny_config(tmp_path):
    # Build from a copy of what a wheel is made of, so that the build leaves nothing in the working tree.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "stellarfm_jax", source / "stellarfm_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
         tmp_path / "dist", source])
    wheel = next((tmp_path / "dist").glob("stellarfm_jax-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("stellarfm_jax/configs/tiny.py", "stellarfm_jax/configs/small.py",
                   "stellarfm_jax/models/small/params.npz", "stellarfm_jax/models/small/model.json"):
        assert needed in names, needed

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    python = venv / "bin" / "python"
    # When this environment is itself a venv (.ci/run), --system-site-packages sees the base interpreter's
    # packages, not this one's: list this environment's site-packages in the new venv too (plain paths, so their
    # .pth files - the editable install of this checkout among them - are not processed).
    venv_site = pathlib.Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                                 ).stdout.strip())
    (venv_site / "parent_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # pip of this environment, installing into the venv; -I: the editable install of this checkout is visible
    # through --system-site-packages and must not count as "already installed".
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-I", "-q", wheel])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = write_dataset(elsewhere / "stars.h5", make_synthetic_dataset(300, seed=11))
    where = run([python, "-c", "import stellarfm_jax; print(stellarfm_jax.__file__)"], cwd=elsewhere).stdout.strip()
    assert pathlib.Path(where).is_relative_to(venv), where  # the installed copy, not this checkout
    out = run([python, "-m", "stellarfm_jax.train", "--config", "tiny", "--workdir", "run", "--data", data.name,
               "--set", "train.epochs=1", "--no-progress"], cwd=elsewhere)
    assert "done: run/model" in out.stdout
    model = elsewhere / "run" / "model"
    doc = json.loads((model / "model.json").read_text())
    assert doc["metadata"]["epochs_trained"] == 1 and doc["metadata"]["config"]["name"] == "tiny"
    assert set(doc["checksums"]) == {"params", "model", "vocab"}
