"""Training recipes compared under one fixed compute budget on this machine (issue: the model in every direction).

Each candidate (a built-in config plus ``--set`` style overrides) trains on the real training split for the same
budget of *training* time (evaluation time is not counted): a probe epoch after a compiling one measures its
speed (the training epochs' own compilation then counts in the budget, as it does for a user), the run is then
planned for as many epochs as fit (one cosine cycle over them, as ``small`` does) and evaluated on a fixed
validation subset every ``--eval-every-min`` minutes of training.

The clock is the process's CPU time divided by the machine's cores: on an idle machine whose cores the training
keeps busy, that is its wall time, and unlike wall time it does not count what a shared host takes away (a VM's
steal time, 100% at times on this project's VM) or other processes. A budget of 20 minutes is 20 x 2 CPU-minutes
on 2 cores. Wall seconds are recorded next to it. Each evaluation records:

* spectra + colours -> labels: robust scatter of teff, logg, m_h (the training monitor's ``xp_colours`` set,
  :func:`stellarfm_jax.metrics.label_metrics`) and their robust z std; the same from the evaluation's ``coarse``
  set (10 flux tokens + colours), keyed ``coarse_*``;
* labels -> spectrum: every flux token from teff, logg, m_h, alpha_m, logebv; median |pred / obs - 1| over stars
  and tokens and the robust std of the flux z-scores (pred - obs) / sqrt(sigma^2 + err^2).

Prints a table, writes JSON (every evaluation of every candidate, with the commands) and a PNG of each metric
against training time::

    python benchmarks/recipe_study.py --budget-min 25 --out benchmarks/results/recipe_study.json
    python benchmarks/recipe_study.py --budget-min 1 --candidates small,coarse_random --val-stars 300   # a smoke run
    python benchmarks/recipe_study.py --budget-min 25 --resume     # after an interruption: only the missing candidates
    python benchmarks/recipe_study.py --budget-min 20 --parallel 2 # two candidates at a time, each in its own process

Run it on an otherwise idle machine: the candidates are compared by what they reach in the same time. The JSON
records the processor (hosts of one VM type differ: Zen 4 and Zen 5 on this project's), and ``--resume`` refuses a
file measured on another. Compare candidates within one file only: the clock of a process alone on the cores also
bills its thread pool's spinning while it waits (one measurement: ``small_enc4``'s probe epoch cost 35.9 s on the
clock alone, 28.7 s beside another candidate, 60 s wall both times; ``small``'s epochs cost about the same, ~20 s,
either way). ``--parallel 2`` trains two candidates at once, each in its own process and billed its own CPU time.
One run of these small models keeps the 2 cores only ~60-80% busy, so two at a time raise the total throughput a
little (5-17% on the Zen 5 host: a ``small`` epoch took 22-24 s wall alone, 41 s beside another candidate), and
each run takes ~1.8x its lone wall time. Each result records ``trained_alongside``: an upper bound (the last of an
odd number of candidates may finish alone).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stellarfm_jax.config import apply_overrides, load_config  # noqa: E402
from stellarfm_jax.data import default_dataset_path, read_dataset  # noqa: E402
from stellarfm_jax.evaluation import labels_to_spectra, paper_input_sets  # noqa: E402
from stellarfm_jax.inference import StellarModel  # noqa: E402
from stellarfm_jax.metrics import label_metrics, spectra_colour_inputs  # noqa: E402
from stellarfm_jax.train import predictor, run_epoch, setup_run  # noqa: E402
from stellarfm_jax.vocab import robust_scale  # noqa: E402

# ``small`` is the shipped recipe (xp_coarse, task-aware contexts, micro-batches of 32, no length buckets); the other
# candidates change one or two things from it. Template rows show whole token groups, but a length bucket caps its
# rows' context (sampling.py), so recipes with templates run without buckets.
NO_TASKS = ["train.task_probabilities=[]", "train.length_buckets=4"]  # the paper's random subsets, bucketed
SAMPLED = ["data.schema=xp_sampled"]  # 85 flux tokens of 8 nm (the schema of the model shipped before)
WIDE = ["model.embedding_dim=96", "model.encoder_dense=384", "model.decoder_dense=768"]
# + the colours and a random number of flux tokens -> labels (the evaluation's coarse and sparse input sets)
SPARSE = ['train.task_probabilities=[["labels_to_spectrum",0.25],["spectrum_to_labels",0.15],'
          '["sparse_spectrum_to_labels",0.3],["half_spectrum",0.1]]']
CANDIDATES = {
    "sampled_random": ("small", SAMPLED + NO_TASKS),  # the recipe of the model shipped before
    "sampled_tasks": ("small", SAMPLED),
    "coarse_random": ("small", NO_TASKS),
    "small": ("small", []),
    "small_sparse": ("small", SPARSE),
    "small_d96": ("small", WIDE),
    "small_enc4": ("small", ["model.encoder_blocks=4"]),
    "small_r16": ("small", ["train.outputs_per_star=16"]),
    "small_lr3e-3": ("small", ["train.learning_rate=3e-3"]),
}
LABELS = ("teff", "logg", "m_h")


def evaluate(params, run, val) -> dict:
    """The study's numbers for one set of parameters on the validation subset."""
    vocab, spec = run.vocab, run.spec
    labels = [n for n in LABELS if n in vocab.names]
    predict = predictor(params, spec)
    out = label_metrics(predict, vocab, val.values, val.errors, spectra_colour_inputs(vocab, spec.config.context_length),
                        labels)
    # the evaluation's ``coarse`` set (10 flux tokens + colours): the sparse contexts the shipped model is weakest on
    coarse = next(s for s in paper_input_sets(vocab, spec.config.context_length) if s.key == "coarse")
    for k, v in label_metrics(predict, vocab, val.values, val.errors, list(coarse.names), labels).items():
        out[f"coarse_{k}"] = v
    model = StellarModel.from_params(params, spec.config, vocab)
    gen = labels_to_spectra(model, val)
    a = gen["arrays"]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (a["pred"] - a["observed"]) / np.sqrt(a["sigma"] ** 2 + np.nan_to_num(a["observed_error"]) ** 2)
    out["gen_median_abs_frac"] = gen["median_abs_fractional_residual"]
    out["gen_z_std"] = float(robust_scale(z[np.isfinite(z)]))
    return out


def cpu_model() -> str:
    """The processor, by name and family/model (two hosts of one VM type can differ: Zen 4 and Zen 5 here)."""
    info = {}
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown cpu"
    return f"{info.get('model name', 'unknown cpu')}, family {info.get('cpu family', '?')} model {info.get('model', '?')}"


def core_seconds() -> float:
    """The study's clock: this process's CPU time (all threads) over the machine's cores."""
    return time.process_time() / (os.cpu_count() or 1)


def study_one(name: str, base: str, overrides: list[str], budget_s: float, eval_every_s: float, val_stars: int,
              log=print) -> dict:
    config = apply_overrides(load_config(base), overrides)
    dataset = read_dataset(default_dataset_path(schema=config.data.schema))
    val = dataset.val.subset(slice(0, min(val_stars, len(dataset.val))))
    probe = setup_run(config, dataset)
    state, _ = run_epoch(probe, probe.state, 0)  # compiles (minutes for bucketed programs): not timed
    t0, w0 = core_seconds(), time.perf_counter()
    run_epoch(probe, state, 1)
    epoch_s, epoch_wall = core_seconds() - t0, time.perf_counter() - w0
    epochs = max(1, int(budget_s / epoch_s))
    config = apply_overrides(config, [f"train.epochs={epochs}", f"train.sgdr_period_epochs={epochs}"])
    run = setup_run(config, dataset)
    log(f"[{name}] probe epoch {epoch_s:.1f} s on the study's clock ({epoch_wall:.1f} s wall) -> {epochs} epochs in "
        f"{budget_s / 60:.0f} min")
    state, trained_s, trained_wall, next_eval, curve = run.state, 0.0, 0.0, eval_every_s, []
    for epoch in range(epochs):
        t0, w0 = core_seconds(), time.perf_counter()
        state, metrics = run_epoch(run, state, epoch)
        float(metrics["loss"])
        trained_s += core_seconds() - t0
        trained_wall += time.perf_counter() - w0
        if trained_s >= next_eval or epoch + 1 == epochs:
            record = {"epoch": epoch + 1, "train_s": trained_s, "train_wall_s": trained_wall, "loss": metrics["loss"],
                      **evaluate(state.params, run, val)}
            curve.append(record)
            next_eval += eval_every_s
            log(f"[{name}] epoch {epoch + 1}/{epochs} ({trained_s / 60:.1f} min, {trained_wall / 60:.1f} wall): " + ", ".join(
                f"{k}={record[k]:.4g}" for k in ("teff_scatter", "logg_scatter", "m_h_scatter", "coarse_logg_scatter",
                                                 "coarse_m_h_scatter", "gen_median_abs_frac", "gen_z_std")
                if k in record))
    return {"name": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": base, "overrides": overrides, "probe_epoch_s": epoch_s, "probe_epoch_wall_s": epoch_wall,
            "epochs": epochs,
            "parameters": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(run.state.params))),
            "final": curve[-1], "curve": curve,
            "command": f"python -m stellarfm_jax.train --config {base} " + " ".join(f"--set '{o}'" for o in overrides)}


def table(results: list[dict]) -> str:
    cols = ("teff_scatter", "logg_scatter", "m_h_scatter", "teff_z_std", "coarse_teff_scatter", "coarse_logg_scatter",
            "coarse_m_h_scatter", "gen_median_abs_frac", "gen_z_std")
    lines = ["| candidate | params | epochs | " + " | ".join(cols) + " |", "|---|---:|---:|" + "---:|" * len(cols)]
    for r in results:
        f = r["final"]
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['epochs']} | " +
                     " | ".join("n/a" if k not in f else f"{f[k]:.4g}" for k in cols) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: pathlib.Path) -> None:
    from matplotlib.figure import Figure

    keys = ("teff_scatter", "logg_scatter", "m_h_scatter", "coarse_logg_scatter", "gen_median_abs_frac")
    fig = Figure(figsize=(15, 3.2))
    for ax, key in zip(fig.subplots(1, len(keys)), keys):
        for r in results:
            pts = [(c["train_s"] / 60, c[key]) for c in r["curve"] if key in c]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=r["name"])
        ax.set_xlabel("training minutes (CPU time / cores)")
        ax.set_title(key)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--budget-min", type=float, default=25.0,
                   help="training minutes per candidate (process CPU time / cores: wall minutes on an idle machine)")
    p.add_argument("--eval-every-min", type=float, default=5.0, help="evaluate every this many training minutes")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names: " + ", ".join(CANDIDATES))
    p.add_argument("--val-stars", type=int, default=1000, help="validation stars evaluated")
    p.add_argument("--out", default="benchmarks/results/recipe_study.json")
    p.add_argument("--resume", action="store_true",
                   help="keep the candidates already in --out (same budget, validation stars and processor) and run "
                        "the rest")
    p.add_argument("--parallel", type=int, default=1,
                   help="candidates trained at once, each in its own process (the clock is per process; a candidate "
                        "that keeps fewer than all cores busy leaves them to the other)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {cpu_model()} ({os.cpu_count()} cores)",
              "budget_min": args.budget_min, "clock": "process CPU time / cores", "val_stars": args.val_stars,
              "results": []}
    if args.resume and out.is_file():
        previous = json.loads(out.read_text())
        if (previous.get("budget_min") != args.budget_min or previous.get("val_stars") != args.val_stars
                or previous.get("clock") != record["clock"] or previous.get("machine") != record["machine"]):
            p.error(f"--resume: {out} was measured with --budget-min {previous.get('budget_min')} --val-stars "
                    f"{previous.get('val_stars')} on the clock {previous.get('clock', 'wall time')!r} on "
                    f"{previous.get('machine')!r}, not {args.budget_min} / {args.val_stars} on {record['clock']!r} on "
                    f"{record['machine']!r}; write a new --out")
        record["results"] = [r for r in previous["results"] if r["name"] in names]
        done = {r["name"] for r in record["results"]}
        print(f"--resume: keeping {sorted(done) or 'nothing'} from {out}")
        names = [n for n in names if n not in done]
    order = {n: i for i, n in enumerate(CANDIDATES)}

    def keep(result: dict) -> None:  # after every candidate: a killed study keeps what it measured
        result["trained_alongside"] = args.parallel - 1  # other candidates training at the same time
        record["results"] = sorted(record["results"] + [result], key=lambda r: order[r["name"]])
        out.write_text(json.dumps(record, indent=1))
        plot(record["results"], out.with_suffix(".png"))

    jobs = [(name, *CANDIDATES[name], 60 * args.budget_min, 60 * args.eval_every_min, args.val_stars)
            for name in names]
    if args.parallel <= 1:
        for job in jobs:
            keep(study_one(*job))
    else:
        # spawned, not forked: a forked child would inherit this process's XLA runtime and threads
        with concurrent.futures.ProcessPoolExecutor(args.parallel, mp_context=multiprocessing.get_context("spawn"),
                                                    max_tasks_per_child=1) as pool:
            for done in concurrent.futures.as_completed([pool.submit(study_one, *job) for job in jobs]):
                keep(done.result())
    print(table(record["results"]))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
