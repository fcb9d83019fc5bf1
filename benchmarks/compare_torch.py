"""Side by side on one machine: our training and inference against the PyTorch replica of the original
(tests/torch_reference.py) driven the way the original drives it (original_spec §5.2-5.3, §6.2-6.3).

    python benchmarks/compare_torch.py [--configs paper,small] [--repeats 3] [--train-steps 1]
                                       [--infer-stars 1024] [--out benchmarks/results/compare_torch.json]

Training, per timed "epoch" of ``train_steps`` batches of the config's batch size (same stars, same model
config in float32 - the original refuses mixed precision on a CPU - one output token per star as the
original):
  * ours: the jitted epoch function of ``stellarfm_jax.steps`` (on-device shuffling and token sampling,
    ``lax.scan`` over AdamW steps, state donated): the paper's procedure with the whole batch in one
    pass; the same with the gradient accumulated over micro-batches of 32 stars
    (``train.micro_batch_size``, cache-sized on a CPU); and with ``train.length_buckets=4`` as well
    (stratified padding, padding-only context slots skipped);
  * original: its per-epoch NumPy data path (row shuffle, per-star shuffle of the available tokens in a
    Python loop with lock-step RNGs, crop to the context, per-star random padding loop, weighted random
    output choice with ``np.random.rand``, epoch tensors built), then one eager torch step per batch
    (zero_grad, forward, robust MSE, backward, AdamW step, ``loss.item()``).
Inference, N stars with 64 input tokens, 1 and 3 requested tokens:
  * ours: the public API (``StellarModel.perceive(...).request(names)``: one fused encoder+decoder program),
    with its default chunk of 1024 stars and with ``chunk_size=32`` (cache-sized on a CPU);
  * original: ``perceive`` (standardise, embed all, encoder in chunks of 1024 under inference_mode) then
    ``request`` decoding each requested token separately over chunks of 1024, de-standardised into a
    DataFrame (a dict when pandas is missing).
Runs alternate ours / original in every repeat (so both see the same machine load); each repeat gives
one ratio. Random weights and synthetic standardised data: speed does not depend on the values.
Compilation (ours) and a warm-up step (torch) are excluded from the timed runs and reported separately.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

import torch_reference  # noqa: E402
from stellarfm_jax.config import load_config  # noqa: E402
from stellarfm_jax.inference import StellarModel  # noqa: E402
from stellarfm_jax.nn import StellarPerceptron, init_params  # noqa: E402
from stellarfm_jax.optim import make_optimizer  # noqa: E402
from stellarfm_jax.sampling import StarData, output_weight_vector  # noqa: E402
from stellarfm_jax.schemas import paper_vocabulary  # noqa: E402
from stellarfm_jax.train import epoch_function  # noqa: E402
from stellarfm_jax.train_state import TrainState  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
REQUESTS = ["teff", "logg", "m_h"]


# ------------------------------------------------------------------------------------------- data
def synthetic_standardised(vocab, n_stars: int, seed: int = 0):
    """Standardised values [N, V] with NaN = missing, in the paper data's pattern: per band the first
    n_relevant (30..55) XP coefficients present, colours 95%, labels 25%, logebv / g_fakemag 90%."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_stars, vocab.size)).astype(np.float32)
    present = np.zeros(z.shape, bool)
    names = np.array(vocab.names)
    for band in ("bp", "rp"):
        cols = np.flatnonzero(np.char.startswith(names, band) & (names != "bprp"))
        n_rel = rng.integers(30, 56, n_stars)
        present[:, cols] = np.arange(cols.size)[None, :] < n_rel[:, None]
    for name, frac in (("bprp", .95), ("jh", .95), ("jk", .95), ("teff", .25), ("logg", .25), ("m_h", .25),
                       ("logebv", .9), ("g_fakemag", .9)):
        if name in vocab.names:
            present[:, vocab.token_id(name) - 1] = rng.random(n_stars) < frac
    errors = np.where(present, 0.05, np.nan).astype(np.float32)
    return np.where(present, z, np.nan), errors


# ------------------------------------------------------------------------------------------- original
class OriginalTrainingData:
    """The original's TrainingGenerator (original_spec §5.2), written from the spec: NumPy, per epoch."""

    def __init__(self, z, errors, output_ids, context_length: int, outputs_padding: int, batch_size: int, seed=0):
        n, v = z.shape
        tokens = np.where(np.isnan(z), 0, np.arange(1, v + 1)[None, :]).astype(np.int64)
        self.values_vocab = np.nan_to_num(z).astype(np.float32)
        self.errors_vocab = np.nan_to_num(errors).astype(np.float32)
        self.prob_matrix = (tokens[:, output_ids - 1] != 0).astype(np.float64)
        self.output_ids = output_ids
        order = np.argsort(tokens == 0, axis=1, kind="stable")  # "aggregate_nans"
        self.inputs = np.take_along_axis(self.values_vocab, order, 1)
        self.tokens = np.take_along_axis(tokens, order, 1)
        self.first_n = (tokens != 0).sum(1)
        self.context_length, self.outputs_padding, self.batch_size = context_length, outputs_padding, batch_size
        self.rng = np.random.default_rng(seed)

    def epoch(self):
        """The epoch's tensors: inputs (N,T,1), input_token (N,T), label_token (N,1), label, label_err."""
        n = self.inputs.shape[0]
        rows = self.rng.permutation(n)
        x, t, first_n = self.inputs[rows].copy(), self.tokens[rows].copy(), self.first_n[rows]
        rng_x, rng_t = copy.deepcopy(self.rng), copy.deepcopy(self.rng)
        for i in range(n):  # shuffle_row: the same permutation of the available entries for values and tokens
            rng_x.shuffle(x[i, : first_n[i]])
            rng_t.shuffle(t[i, : first_n[i]])
        self.rng = rng_x
        x, t = x[:, : self.context_length], t[:, : self.context_length]
        for i in range(n):  # random padding, one star at a time
            pad = self.rng.choice(np.arange(0, self.outputs_padding))
            if pad > 0:
                x[i, -pad:] = 0.0
                t[i, -pad:] = 0
        prob = self.prob_matrix[rows]
        cdf = np.cumsum(prob / prob.sum(1, keepdims=True), axis=1)
        choice = np.argmax(cdf > np.random.rand(n, 1), axis=1)  # random_choice (global np.random)
        label_token = self.output_ids[choice]
        label = self.values_vocab[rows, label_token - 1]
        label_err = self.errors_vocab[rows, label_token - 1]
        return (torch.tensor(x[:, :, None]), torch.tensor(t), torch.tensor(label_token[:, None]),
                torch.tensor(label[:, None]), torch.tensor(label_err[:, None]))


def robust_mean_squared_error(y, mean, logvar, err):
    total_var = torch.exp(logvar) + torch.square(err)
    return torch.sum(0.5 * (torch.square(y - mean) / total_var + torch.log(total_var))) / y.shape[0]


def original_epoch(model, optimizer, generator) -> float:
    inputs, input_token, label_token, label, label_err = generator.epoch()
    model.train()
    total = 0.0
    for start in range(0, inputs.shape[0] - generator.batch_size + 1, generator.batch_size):
        sl = slice(start, start + generator.batch_size)
        optimizer.zero_grad()
        mean, logvar = model(inputs[sl], input_token[sl], label_token[sl])
        loss = robust_mean_squared_error(label[sl], mean[:, :, 0], logvar[:, :, 0], label_err[sl])
        torch.mean(torch.square(mean[:, :, 0] - label[sl]))  # mse metric, as the original
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total


def original_inference(model, vocab, values, names, requests, batch_size: int = 1024, context_length: int = 64):
    """perceive + request as the original (original_spec §6.2-6.3): one decoder pass per requested token."""
    ids = vocab.ids(names)
    centre, scale = vocab.centre[ids - 1], vocab.scale[ids - 1]
    z = (values - centre) / scale
    tokens = np.where(np.isnan(z), 0, ids[None, :])
    z = np.nan_to_num(z)
    pad = context_length - z.shape[1]
    z = np.pad(z, ((0, 0), (0, pad))).astype(np.float32)
    tokens = np.pad(tokens, ((0, 0), (0, pad)))
    model.eval()
    with torch.inference_mode():
        x = torch.tensor(z[:, :, None])
        t = torch.tensor(tokens)
        mask = t == 0
        embedded = model.embedding_layer(t, x)
        perception = torch.cat([model.torch_encoder(embedded[s:s + batch_size], mask[s:s + batch_size])
                                for s in range(0, len(z), batch_size)])
        out = {}
        for name in requests:
            rid = vocab.token_id(name)
            unit = model.embedding_layer(torch.full((len(z), 1), rid, dtype=torch.long))
            means, errs = [], []
            for s in range(0, len(z), batch_size):
                mean, logvar = model.torch_decoder(unit[s:s + batch_size], perception[s:s + batch_size], mask[s:s + batch_size])
                means.append(mean[:, 0, 0])
                errs.append(torch.sqrt(torch.exp(logvar[:, 0, 0])))
            out[name] = torch.cat(means).numpy() * vocab.scale[rid - 1] + vocab.centre[rid - 1]
            out[f"{name}_error"] = torch.cat(errs).numpy() * vocab.scale[rid - 1]
    try:
        import pandas as pd

        return pd.DataFrame(out)
    except ImportError:
        return out


# ------------------------------------------------------------------------------------------- bench
def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(xs):
    xs = np.asarray(xs, float)
    return {"min": float(xs.min()), "median": float(np.median(xs)), "max": float(xs.max())}


def bench_config(name: str, repeats: int, train_steps: int, infer_stars: int, buckets: int = 4, micro: int = 32,
                 infer_chunk: int = 32, log=print) -> dict:
    cfg = load_config(name)
    mcfg = dataclasses.replace(cfg.model, compute_dtype="float32")
    vocab = paper_vocabulary()
    batch = cfg.train.batch_size
    n_train = batch * train_steps
    z, err = synthetic_standardised(vocab, n_train)
    available = ~np.isnan(z)

    # ours
    model = StellarPerceptron(mcfg, vocab.size)
    optimizer = make_optimizer(cfg.train, train_steps)
    params = init_params(model, jax.random.key(0))
    data = StarData(jnp.asarray(np.nan_to_num(z)), jnp.asarray(np.nan_to_num(err)), jnp.asarray(available))
    weights = output_weight_vector(vocab)
    variants = {"train_ours": (1, 0), "train_ours_micro": (1, micro), "train_ours_buckets_micro": (buckets, micro)}
    runs, compile_s = {}, {}
    for key, (num_buckets, micro_batch) in variants.items():
        vcfg = dataclasses.replace(cfg, model=mcfg, train=dataclasses.replace(
            cfg.train, length_buckets=num_buckets, micro_batch_size=micro_batch, outputs_per_star=1))
        fn = epoch_function(vcfg, vocab, optimizer, weights, batch_size=batch, steps_per_epoch=train_steps)
        st = TrainState.create(jax.tree.map(jnp.copy, params), optimizer)  # donated: keep params intact
        t0 = time.perf_counter()
        st, m = fn(st, data, 0)
        float(m["loss"])
        compile_s[key] = time.perf_counter() - t0
        runs[key] = [fn, st]
    ours_model = StellarModel.from_params(jax.device_get(params), mcfg, vocab)

    # original
    torch.manual_seed(0)
    tmodel = torch_reference.StellarPerceptronTorchModel.from_model_config(mcfg, vocab.size)
    topt = torch.optim.AdamW(tmodel.parameters(), lr=cfg.train.learning_rate)
    output_ids = np.flatnonzero(np.asarray(weights) > 0) + 1
    generator = OriginalTrainingData(z, err, output_ids, mcfg.context_length, cfg.train.max_padding, batch)
    warm = timed(lambda: original_epoch(tmodel, topt, generator))

    rng = np.random.default_rng(1)
    names = [f"bp{i}" for i in range(32)] + [f"rp{i}" for i in range(32)]  # 64 input tokens
    values = rng.normal(size=(infer_stars, 64)).astype(np.float32)
    for chunk in (1024, infer_chunk):  # compile the R=3 and R=1 programs
        ours_model.perceive(values, names, chunk_size=chunk).request(REQUESTS)
        ours_model.perceive(values, names, chunk_size=chunk).request(REQUESTS[:1])

    rows = {k: [] for k in (*variants, "train_original", "infer_R1_ours", "infer_R1_ours_chunk", "infer_R1_original",
                            "infer_R3_ours", "infer_R3_ours_chunk", "infer_R3_original")}
    epoch = 1
    for rep in range(repeats):
        for key in variants:
            def ours_train():
                fn, st = runs[key]
                st, metrics = fn(st, data, epoch)
                float(metrics["loss"])
                runs[key][1] = st

            rows[key].append(n_train / timed(ours_train))
        epoch += 1
        rows["train_original"].append(n_train / timed(lambda: original_epoch(tmodel, topt, generator)))
        for r in (1, 3):
            req = REQUESTS[:r]
            rows[f"infer_R{r}_ours"].append(infer_stars / timed(lambda: ours_model.perceive(values, names).request(req)))
            rows[f"infer_R{r}_ours_chunk"].append(infer_stars / timed(
                lambda: ours_model.perceive(values, names, chunk_size=infer_chunk).request(req)))
            rows[f"infer_R{r}_original"].append(
                infer_stars / timed(lambda: original_inference(tmodel, vocab, values, names, req)))
        log(f"[{name}] repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items()))

    ratios = {key: [a / b for a, b in zip(rows[key], rows["train_original"])] for key in variants}
    for r in (1, 3):
        for ours in (f"infer_R{r}_ours", f"infer_R{r}_ours_chunk"):
            ratios[ours] = [a / b for a, b in zip(rows[ours], rows[f"infer_R{r}_original"])]
    return {
        "config": name, "batch_size": batch, "train_steps_per_epoch": train_steps, "train_stars_per_epoch": n_train,
        "infer_stars": infer_stars, "input_tokens": 64, "compute_dtype": "float32",
        "length_buckets": buckets, "micro_batch_size": micro, "infer_chunk": infer_chunk,
        "ours_compile_plus_first_epoch_s": compile_s, "original_warmup_epoch_s": warm,
        "stars_per_s": {k: summary(v) for k, v in rows.items()},
        "ratio": {k: summary(v) for k, v in ratios.items()},
        "raw": {**rows, **{f"ratio_{k}": v for k, v in ratios.items()}},
        "labels": LABELS,
    }


LABELS = {
    "train_ours": "train, paper procedure (whole batch per pass)",
    "train_ours_micro": "train, paper procedure, micro-batched gradient",
    "train_ours_buckets_micro": "train, length buckets + micro-batched gradient",
    "infer_R1_ours": "infer R=1, default chunk 1024", "infer_R1_ours_chunk": "infer R=1, CPU chunk",
    "infer_R3_ours": "infer R=3, default chunk 1024", "infer_R3_ours_chunk": "infer R=3, CPU chunk",
}


def print_table(results) -> None:
    print(f"\n{'config':7} {'ours':50} {'ours stars/s':>13} {'original':>10} {'ratio min/median/max':>24}")
    for res in results:
        for key, label in LABELS.items():
            o = res["stars_per_s"][key]
            t = res["stars_per_s"]["train_original" if key.startswith("train") else key[:9] + "original"]
            r = res["ratio"][key]
            print(f"{res['config']:7} {label:50} {o['median']:13.1f} {t['median']:10.1f} "
                  f"{r['min']:7.2f} /{r['median']:6.2f} /{r['max']:6.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="paper,small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=1, help="batches per timed epoch")
    parser.add_argument("--infer-stars", type=int, default=1024)
    parser.add_argument("--buckets", type=int, default=4, help="train.length_buckets of the bucketed row")
    parser.add_argument("--micro", type=int, default=32, help="train.micro_batch_size of the micro-batched rows")
    parser.add_argument("--infer-chunk", type=int, default=32, help="chunk_size of the 'CPU chunk' inference rows")
    parser.add_argument("--out", default=str(RESULTS / "compare_torch.json"))
    args = parser.parse_args(argv)
    results = [bench_config(c, args.repeats, args.train_steps, args.infer_stars, args.buckets, args.micro,
                            args.infer_chunk) for c in args.configs.split(",")]
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "backend": jax.default_backend(),
            "command": " ".join([pathlib.Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print_table(results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
