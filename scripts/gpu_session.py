"""Everything a lent GPU should do, in one device call of under 10 minutes (issues #6 and #8):

1. ``benchmarks/gpu_check.sh`` (paper config: train stars/s in f32 / bf16 / bf16 + buckets, compile time, MFU,
   inference over 1M stars, peak memory), capped at ``--check-share`` of the budget;
2. train the ``medium`` config on the real data set for as many epochs as the measured speed allows in the
   rest of the budget (one cosine cycle over those epochs; a ``timeout`` backs it up, and the run keeps a
   checkpoint every 10 epochs either way);
3. pack the training workdir (config, metrics, checkpoints) into <= 15 MiB parts under ``$OUT``, which the
   device tool returns (at most 8 files of 16 MiB).

Here, before the call (the prepared HDF5 travels in an ignored folder; ``../shared`` does not travel)::

    mkdir -p .carry && grep -qx '/.carry/' .git/info/exclude || echo /.carry/ >> .git/info/exclude
    cp ~/.cache/stellarfm_jax/datasets/xp_sampled_apogee-xp-library_*_v2.h5 .carry/

On the device (``run`` with ``carry=[".carry"]``, ``timeout_s=600``)::

    PYTHONUNBUFFERED=1 python3 scripts/gpu_session.py run --data .carry/xp_sampled_apogee-xp-library_*_v2.h5

Back here, with the folder the tool returned the files in::

    python scripts/gpu_session.py unpack FILES_DIR runs/gpu_medium
    python -m stellarfm_jax.evaluate --model runs/gpu_medium --out runs/eval_gpu_medium
    python scripts/ship_model.py --workdir runs/gpu_medium --name small --data ~/.cache/.../xp_sampled_..._v2.h5 \\
        --trained-on "1x NVIDIA H200, bfloat16" --command "$(cat runs/gpu_medium/command.txt)"

``run --dry-run`` does every stage on a CPU in about a minute (the GPU check's dry run, the tiny config for
2 epochs) so the script cannot rot (tests/test_scale.py).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a plain checkout (the device has our dependencies, not our package)
PART_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB
MIN_EPOCHS, MAX_EPOCHS = 20, 2000


def plan_epochs(check: dict | None, n_train: int, seconds: float, fallback: int = 100) -> int:
    """Epochs of the medium config that fit ``seconds`` of training, from the GPU check's bf16 throughput of the
    paper config (the medium config costs about as much per star: half the dense widths, 4 requests per star).
    Half the time goes to compilation, validation and checkpoints; ``fallback`` when no measurement."""
    rates = [r["stars_per_s"] for r in (check or {}).get("train", [])
             if r.get("dtype") == "bfloat16" and r.get("stars_per_s")]
    if not rates:
        return fallback
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, 0.5 * seconds * max(rates) / n_train)))


def _stage(cmd: list[str], timeout: float, log) -> int:
    log(f"$ {shlex.join(cmd)}   (time limit {timeout:.0f} s)")
    # gpu_check.sh runs its Python under `timeout`, which must stop it first: a killed `timeout` orphans it.
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_TIMEOUT_S=str(max(int(timeout) - 5, 1)))
    try:
        return subprocess.run(cmd, cwd=REPO, timeout=timeout, env=env).returncode
    except subprocess.TimeoutExpired:
        log(f"stage stopped at its time limit of {timeout:.0f} s")
        return 124


def pack(workdir: pathlib.Path, out: pathlib.Path, prefix: str = "train.tgz.part") -> list[pathlib.Path]:
    """Tar+gzip ``workdir`` (without its exported ``model/``, which is re-made here) into parts under ``out``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(workdir, arcname=".", filter=lambda t: None if t.name.startswith("./model") else t)
    data = buf.getvalue()
    parts = []
    for k in range(0, max(len(data), 1), PART_BYTES):
        part = out / f"{prefix}{k // PART_BYTES:02d}"
        part.write_bytes(data[k:k + PART_BYTES])
        parts.append(part)
    return parts


def unpack(files_dir, workdir, prefix: str = "train.tgz.part") -> pathlib.Path:
    """Join the parts returned by the device and extract the training workdir (refuses a non-empty target)."""
    files_dir, workdir = pathlib.Path(files_dir), pathlib.Path(workdir)
    parts = sorted(files_dir.rglob(f"{prefix}*"))
    if not parts:
        raise FileNotFoundError(f"no {prefix}NN files under {files_dir}")
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"{workdir} exists and is not empty")
    workdir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
        tar.extractall(workdir, filter="data")
    for extra in ("gpu_check.json", "session.json"):
        found = sorted(files_dir.rglob(extra))
        if found:
            (workdir / extra).write_bytes(found[0].read_bytes())
    return workdir


def run(data: str, out: pathlib.Path, budget_s: float, check_share: float, dry_run: bool, log=print) -> dict:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    session = {"dry_run": dry_run, "data": data, "budget_s": budget_s, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

    check_cmd = ["bash", "benchmarks/gpu_check.sh", "--out", str(out)] + (
        ["--dry-run"] if dry_run else ["--steps", "50", "--epochs", "2"])
    session["check_rc"] = _stage(check_cmd, check_share * budget_s, log)
    check_path = out / "gpu_check.json"
    check = json.loads(check_path.read_text()) if check_path.exists() else None

    from stellarfm_jax.data import read_dataset

    n_train = len(read_dataset(data).train)
    train_s = budget_s - (time.perf_counter() - t0) - 30  # leave time to pack
    config = "tiny" if dry_run else "medium"
    epochs = 2 if dry_run else plan_epochs(check, n_train, train_s)
    workdir = pathlib.Path("/tmp/stellarfm_gpu_session_train") if not dry_run else out.parent / "gpu_session_train"
    train_cmd = [sys.executable, "-m", "stellarfm_jax.train", "--config", config, "--workdir", str(workdir),
                 "--data", data, "--no-progress", "--set", f"train.epochs={epochs}",
                 "--set", f"train.sgdr_period_epochs={epochs}"]
    command = "python " + shlex.join(train_cmd[1:])
    session.update(config=config, epochs_planned=epochs, n_train=n_train, train_seconds_allowed=train_s,
                   train_command=command)
    session["train_rc"] = _stage(train_cmd, max(train_s, 30), log)
    workdir.mkdir(parents=True, exist_ok=True)  # a run that failed before starting still gets packed and recorded
    (workdir / "command.txt").write_text(command + "\n")
    session["parts"] = [p.name for p in pack(workdir, out)]
    session["total_s"] = time.perf_counter() - t0
    (out / "session.json").write_text(json.dumps(session, indent=2))
    log(json.dumps(session, indent=1))
    return session


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="on the device: GPU check, train, pack")
    r.add_argument("--data", required=True, help="the prepared HDF5 (a glob is expanded)")
    r.add_argument("--out", default=os.environ.get("OUT"), help="default: $OUT")
    r.add_argument("--budget-s", type=float, default=560.0, help="the whole session's wall time")
    r.add_argument("--check-share", type=float, default=0.5, help="fraction of the budget the GPU check may take")
    r.add_argument("--dry-run", action="store_true", help="tiny sizes on a CPU")
    u = sub.add_parser("unpack", help="here: rebuild the training workdir from the returned parts")
    u.add_argument("files_dir")
    u.add_argument("workdir")
    args = parser.parse_args(argv)
    if args.verb == "unpack":
        print(f"unpacked into {unpack(args.files_dir, args.workdir)}")
        return 0
    matches = sorted(glob.glob(args.data))
    if len(matches) != 1:
        parser.error(f"--data {args.data!r} must name exactly one file; it matches {matches}")
    if not args.out:
        parser.error("--out is required when $OUT is not set")
    session = run(matches[0], pathlib.Path(args.out), args.budget_s, args.check_share, args.dry_run)
    failed = failed_stages(session)
    if failed:
        print(f"error: session failed: {', '.join(failed)} (see the log above and session.json)", file=sys.stderr)
        return 1
    return 0


def failed_stages(session: dict) -> list[str]:
    """The stages of a session record that did not finish cleanly, as 'name (reason)'; a time-out is a failure."""
    out = []
    for name in ("check", "train"):
        rc = session.get(f"{name}_rc")
        if rc:
            out.append(f"{name} stage " + ("timed out" if rc == 124 else f"exited with status {rc}"))
    return out


if __name__ == "__main__":
    sys.exit(main())
