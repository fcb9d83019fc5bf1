"""New tokens taught to a trained model with LoRA adapters (stellarfm_jax.adapters; issue 7)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from stellarfm_jax import adapters
from stellarfm_jax.config import apply_overrides, load_config
from stellarfm_jax.data import write_dataset
from stellarfm_jax.finetune_tokens import main as finetune_main
from stellarfm_jax.inference import StellarModel
from stellarfm_jax.synthetic import make_synthetic_dataset
from stellarfm_jax.vocab import robust_scale

from conftest import WITHHELD

NEW = "m_h"


@pytest.fixture(scope="module")
def setup(tiny_trained_without_m_h):
    """A tiny model trained on synthetic stars with m_h held out (tests/conftest.py), and the full data set (m_h
    included)."""
    full, held_out, cfg, params = tiny_trained_without_m_h
    assert NEW == WITHHELD
    base = StellarModel(params, cfg.model, held_out.vocab, {"config": cfg.to_dict()})
    return full, base


def _labelled(full, n):
    rows = adapters.labelled_subset(full.train.values, [full.vocab.token_id(NEW) - 1], n, seed=0)
    return full.train.values[rows], full.train.errors[rows]


@pytest.fixture(scope="module")
def adapted(setup):
    full, base = setup
    values, errors = _labelled(full, 300)
    frozen = jax.tree.map(np.array, base.params)  # copies: nothing may write into the base weights
    model = adapters.fine_tune(base, values, errors, full.vocab.names, [NEW], groups=["label"],
                               config=adapters.AdapterConfig(epochs=60), log=lambda *a: None)
    return model, frozen


def _inputs(full, names):
    return full.test.values[:, full.vocab.ids(names) - 1]


def test_without_tokens_and_drop_tokens_config():
    full = make_synthetic_dataset(300, seed=1)
    less = full.without_tokens(["m_h", "jk"])
    assert less.vocab.names == tuple(n for n in full.vocab.names if n not in ("m_h", "jk"))
    assert "m_h" not in less.vocab.outputs
    col = full.vocab.token_id("teff") - 1
    np.testing.assert_array_equal(less.test.values[:, less.vocab.token_id("teff") - 1], full.test.values[:, col])
    assert less.vocab.scale[less.vocab.token_id("teff") - 1] == full.vocab.scale[col]
    with pytest.raises(KeyError, match="closest valid names"):
        full.without_tokens(["m_hh"])
    cfg = apply_overrides(load_config("small"), ["data.drop_tokens=alpha_m,jk"])
    assert cfg.data.drop_tokens == ("alpha_m", "jk")
    assert apply_overrides(load_config("small"), ['data.drop_tokens=["alpha_m"]']).data.drop_tokens == ("alpha_m",)


def test_merge_lora_is_w_plus_scaled_low_rank_product(setup):
    _, base = setup
    adapter = adapters.init_adapter(jax.random.key(0), base.params, 1, rank=3)
    merged = adapters.merge_lora(base.params, adapter, 2.0)  # b = 0 at init: identity
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(base.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rng = np.random.default_rng(0)
    lora = {p: {"a": rng.normal(size=f["a"].shape).astype(np.float32), "b": rng.normal(size=f["b"].shape).astype(np.float32)}
            for p, f in adapter["lora"].items()}
    merged = adapters.merge_lora(base.params, {**adapter, "lora": lora}, 0.5)
    w = np.asarray(base.params["decoder_blocks_0"]["attention"]["query_kernel"])  # [D, h, d]
    ab = lora["decoder_blocks_0.attention.query_kernel"]
    expected = w + 0.5 * (ab["a"] @ ab["b"]).reshape(w.shape)
    np.testing.assert_allclose(np.asarray(merged["decoder_blocks_0"]["attention"]["query_kernel"]), expected, rtol=1e-6, atol=1e-6)
    w = np.asarray(base.params["decoder_blocks_1"]["attention"]["out_kernel"])  # [h, d, D]
    ab = lora["decoder_blocks_1.attention.out_kernel"]
    np.testing.assert_allclose(np.asarray(merged["decoder_blocks_1"]["attention"]["out_kernel"]),
                               w + 0.5 * (ab["a"] @ ab["b"]).reshape(w.shape), rtol=1e-6, atol=1e-6)
    # Encoder and embedding are never adapted.
    assert not any(p.startswith(("encoder", "embedding")) for p in adapter["lora"])
    np.testing.assert_array_equal(np.asarray(merged["encoder_blocks_0"]["dense_1"]["kernel"]),
                                  np.asarray(base.params["encoder_blocks_0"]["dense_1"]["kernel"]))


def test_new_token_is_learned_and_the_base_is_frozen_bit_for_bit(setup, adapted):
    full, base = setup
    model, frozen = adapted
    for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(base.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    names = [n for n in base.vocab.names if n != "teff"][: base.context_length]
    x = _inputs(full, names)
    old = ["teff", "logg", "s3"]
    before = base.perceive(x, names).request(old)
    after = model.perceive(x, names).request(old + [NEW])
    for key in before.keys():
        np.testing.assert_array_equal(after[key], before[key])  # old answers unchanged, bit for bit

    truth = full.test.values[:, full.vocab.token_id(NEW) - 1]
    ok = np.isfinite(truth)
    scatter = robust_scale(after[NEW][ok] - truth[ok])
    untrained = adapters.AdaptedModel(base, adapters.init_adapter(jax.random.key(0), base.params, 1, 8),
                                      model.vocab, model.adapter_config)
    scatter0 = robust_scale(untrained.perceive(x, names).request([NEW])[NEW][ok] - truth[ok])
    spread = robust_scale(truth[ok])
    assert scatter < 0.5 * spread, (scatter, spread)
    assert scatter < 0.6 * scatter0, (scatter, scatter0)
    z = (after[NEW][ok] - truth[ok]) / after[f"{NEW}_error"][ok]
    assert 0.6 < robust_scale(z) < 1.6


def test_requests_mixing_old_and_new_tokens_equal_single_calls_and_new_token_is_an_input(setup, adapted):
    full, base = setup
    model, _ = adapted
    names = [n for n in base.vocab.names][:10]
    p = model.perceive(_inputs(full, names)[:50], names)
    both = p.request(["teff", NEW])
    np.testing.assert_array_equal(both[NEW], p.request([NEW])[NEW])
    np.testing.assert_array_equal(both["teff"], p.request(["teff"])["teff"])
    with_new = model.perceive(_inputs(full, names + [NEW])[:50], names + [NEW]).request(["teff", NEW])
    assert np.isfinite(with_new["teff"]).all() and np.isfinite(with_new[NEW]).all()


def test_adapter_saves_alone_and_reloads_only_onto_its_base(setup, adapted, tmp_path):
    full, base = setup
    model, _ = adapted
    model.save(tmp_path / "adapter")
    with np.load(tmp_path / "adapter" / "adapter.npz") as z:
        keys = list(z.files)
        stored = sum(z[k].size for k in keys)
    assert all(k.split("/")[0] in ("embeddings", "bias", "lora") for k in keys)
    assert stored == sum(x.size for x in jax.tree.leaves(model.adapter)) < sum(x.size for x in jax.tree.leaves(base.params))
    back = adapters.load_adapter(tmp_path / "adapter", base)
    names = list(base.vocab.names[:12])
    x = _inputs(full, names)[:64]
    np.testing.assert_array_equal(back.perceive(x, names).request([NEW, "teff"])[NEW],
                                  model.perceive(x, names).request([NEW, "teff"])[NEW])
    other = StellarModel(jax.tree.map(lambda a: a + 1e-3, base.params), base.model_config, base.vocab)
    with pytest.raises(ValueError, match="different base model"):
        adapters.load_adapter(tmp_path / "adapter", other)
    with pytest.raises(FileNotFoundError, match="not an adapter directory"):
        adapters.load_adapter(tmp_path, base)


def test_bad_fine_tuning_input_is_refused(setup):
    full, base = setup
    values, errors = _labelled(full, 50)
    with pytest.raises(ValueError, match="already in the base model"):
        adapters.fine_tune(base, values, errors, full.vocab.names, ["teff"])
    with pytest.raises(ValueError, match="no column for the new tokens"):
        adapters.fine_tune(base, values, errors, full.vocab.names, ["feh"])
    with pytest.raises(ValueError, match=r"must both be \[N, 30\]"):
        adapters.fine_tune(base, values[:, :5], errors, full.vocab.names, [NEW])


def test_cli_trains_saves_and_reports(setup, tmp_path, capsys):
    full, base = setup
    base.save(tmp_path / "base")
    data = write_dataset(tmp_path / "data.h5", full)
    args = ["--model", str(tmp_path / "base"), "--data", str(data), "--out", str(tmp_path / "ad"), "--max-stars", "200",
            "--epochs", "3"]
    assert finetune_main(args + ["--tokens", NEW]) == 0
    report = json.loads((tmp_path / "ad" / "report.json").read_text())
    assert report["labelled_stars"] == 200 and report["base_answers_unchanged"] is True
    assert np.isfinite(report["adapted"][NEW]["scatter"])
    assert finetune_main(args + ["--tokens", "m_hh"]) == 2
    assert "closest valid names" in capsys.readouterr().err
