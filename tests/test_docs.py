"""Every ```python block of README.md and docs/*.md runs as written on the shipped model (issue 14 item 14).

Blocks run in file order, one namespace per file (a later block may use an earlier block's names), in a fresh
working directory where ``runs/small`` is a training workdir holding the shipped model (``model/``): what a
reader has after the README's training command, so ``StellarModel.load("runs/small")`` works as written.

A block that cannot run here is marked by the line ``<!-- not-run: REASON -->`` just above it. Only blocks that
need a long training, a GPU or the network may be marked, and each one is listed in ``NOT_RUN`` below with
its justification: a new marker fails this test until it is justified here too. ``bash`` blocks (training,
evaluation, pip) are not run; their ``python -m stellarfm_jax.<command>`` lines are parsed by the command's own
argument parser, so a renamed or removed option fails here.
"""

from __future__ import annotations

import importlib
import pathlib
import re
import shlex

import pytest

import stellarfm_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
NOT_RUN_MARK = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->\s*$")

# (file, first code line) -> why it cannot run in a test. Keep this tiny: training, GPU or network only.
NOT_RUN = {
    ("README.md", "from stellarfm_jax.config import apply_overrides, load_config"):
        "trains the small config for 10 epochs on the real data set (~5 min of CPU)",
    ("docs/adapters.md", "from stellarfm_jax import adapters"):
        "needs a base model trained without alpha_m (a full training run) and its labelled stars",
    ("docs/convert.md", "from stellarfm_jax.inference import StellarModel"):
        "needs the original release's weights (a download)",
    ("docs/evaluation.md", "from stellarfm_jax import evaluation as ev"):
        "needs the real data set and trains the emulator baseline (minutes)",
    ("docs/evaluation.md", "from stellarfm_jax import data"):
        "trains the labels -> spectrum emulator on the real data set (~3 min)",
    ("docs/inference.md", "import numpy as np"):
        "inverts with a prior fitted on the real data set (a download on a clean clone); compiling the inversion "
        "takes ~100 s on 2 CPU cores (run once by hand: teff 4704 +- 14 K and 5538 +- 69 K for 4700 and 5500 K)",
    ("docs/inference.md", "from stellarfm_jax import data, pretrained"):
        "measures the model error on 4,000 real train stars and inverts 500 validation stars (~3-5 min of CPU; "
        "scripts/ship_model.py --refresh-inversion makes the same calls)",
    ("docs/search.md", "from stellarfm_jax.search import SearchDatabase, SearchModel"):
        "needs the output of finetune_search (a ~3 min contrastive training)",
}


def code_blocks(rel: str):
    """[(language, first line number, code, not-run reason or None)] of one Markdown file."""
    text = (ROOT / rel).read_text()
    out = []
    for m in BLOCK.finditer(text):
        before = text[: m.start()].rstrip("\n").splitlines()
        mark = NOT_RUN_MARK.search(before[-1]) if before else None
        out.append((m.group(1), text[: m.start()].count("\n") + 2, m.group(2), mark.group(1) if mark else None))
    return out


def first_line(code: str) -> str:
    return next(line.strip() for line in code.splitlines() if line.strip())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    stellarfm_jax.pretrained().save(root / "runs" / "small" / "model")
    return root


def test_not_run_markers_are_exactly_the_justified_list():
    marked = {}
    for rel in DOC_FILES:
        for lang, _, code, reason in code_blocks(rel):
            if reason is not None:
                assert lang == "python", f"{rel}: a not-run marker above a {lang or 'plain'} block"
                marked[(rel, first_line(code))] = reason
    assert set(marked) == set(NOT_RUN), (set(marked) ^ set(NOT_RUN))


@pytest.mark.parametrize("rel", DOC_FILES)
def test_python_blocks_run_as_written(rel, workdir, monkeypatch):
    blocks = [(line, code) for lang, line, code, reason in code_blocks(rel) if lang == "python" and reason is None]
    if not blocks:
        pytest.skip(f"{rel} has no runnable python block")
    monkeypatch.chdir(workdir)
    namespace = {"__name__": f"docs_{pathlib.Path(rel).stem}"}
    for line, code in blocks:
        try:
            exec(compile(code, f"{rel}:{line}", "exec"), namespace)  # noqa: S102 - our own documentation
        except Exception as exc:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"{rel}, the python block at line {line} fails: {type(exc).__name__}: {exc}") from exc


def command_lines(rel: str):
    """(line, module, argv) of every ``python -m stellarfm_jax.X ...`` command in the file's bash blocks."""
    for lang, line, code, _ in code_blocks(rel):
        if lang not in ("bash", "sh", ""):
            continue
        for k, text in enumerate(code.replace("\\\n", " ").splitlines()):  # continuation lines joined
            if "python -m stellarfm_jax." not in text:
                continue
            text = re.sub(r"\[[^\]]*\]", " ", text.split(" #")[0])  # [optional ...] placeholders
            for part in re.split(r"&&|;", text):
                words = shlex.split(part, comments=True)
                if len(words) >= 3 and words[:2] == ["python", "-m"] and words[2].startswith("stellarfm_jax."):
                    yield line + k, words[2], words[3:]


@pytest.mark.parametrize("rel", DOC_FILES)
def test_documented_commands_parse(rel):
    checked = 0
    for line, module, argv in command_lines(rel):
        mod = importlib.import_module(module)
        if not hasattr(mod, "build_parser"):
            continue  # a command without a separable parser (its own --help is tested elsewhere)
        parser = mod.build_parser()
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"{rel}:{line}: `python -m {module} {' '.join(argv)}` does not parse") from exc
        checked += 1
    if not checked:
        pytest.skip(f"{rel} documents no stellarfm_jax command with a parser")
