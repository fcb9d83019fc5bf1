"""The object shell of inference (DESIGN §5): :class:`StellarModel` (``load`` / ``save`` / ``perceive`` /
``invert``), :class:`Perception` (validated, standardised inputs; stateless and cheap: the encoder runs again,
chunk by chunk, at every ``request``, so memory stays bounded for catalogues of millions) and
:class:`Prediction` (structured result in physical units with per-star flags).

The jitted pure functions it calls live in :mod:`stellarfm_jax.forward` (re-exported here), the input checks
in :mod:`stellarfm_jax.inputs`.

Decisions worth knowing:

* Requests: all R requested tokens decode in one call (requests do not attend to each other, so this is
  exactly R single calls, and faster).
* All-missing stars are answered from the model's prior (the bias_kv slot is always attendable) and flagged
  ``prior_only``; their embedding is NaN (a mean over no tokens).
* Never-trained outputs: a request for a token outside ``vocab.outputs`` (the paper withholds ``bprp`` and
  ``jk`` as training outputs) raises :class:`UntrainedOutputError` listing the trained outputs: the model does
  answer it, but with uncalibrated error bars (10-45x too small for the shipped model). ``allow_untrained=True``
  answers anyway and flags it: ``res.untrained`` (the names) and a column ``res["<name>_untrained"]`` (True for
  every star, so a written catalogue carries the flag per row).
* Padding, context overflow, duplicate tokens, booleans, extreme values and out-of-range flags: see
  :mod:`stellarfm_jax.inputs`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
# The functional core and the input checks are re-exported here: ``from stellarfm_jax.inference import predict``
# keeps working.
from .forward import (CPU_CHUNK_SIZE, DEFAULT_CHUNK_SIZE, ModelSpec, attention_without_bias, decode,  # noqa: F401
                      default_chunk_size, encode, map_chunks, masked_mean_embedding, predict, predict_with_attention)
from .inputs import (EXTREME_MODES, MAX_ABS_Z, OUT_OF_RANGE_Z, OVERFLOW_MODES, PreparedInputs,  # noqa: F401
                     UntrainedOutputError, prepare_inputs, request_ids, token_ids)
from .saved_model import load_model, resolve_model_dir, save_model
from .vocab import Vocabulary


# ====================================================================================== results
class Prediction:
    """Requested tokens of N stars in physical units, with per-star flags.

    ``res["teff"]`` / ``res["teff_error"]`` are float64 [N] (error = sqrt(exp(logvar)) x token scale);
    ``res["prior_only"]`` bool [N] (no real input token: answered from the model's prior),
    ``res["n_out_of_range"]`` int [N] (inputs outside the training range). ``untrained`` names the requested
    tokens the model was never trained to output (only with ``request(..., allow_untrained=True)``), each with a
    column ``res["<name>_untrained"]`` (bool [N], all True). ``attention`` holds the encoder and decoder
    attention (see :func:`predict_with_attention`) when requested.
    """

    def __init__(self, names: Sequence[str], mean: np.ndarray, error: np.ndarray, prior_only: np.ndarray,
                 n_out_of_range: np.ndarray, attention: dict | None = None, untrained: Sequence[str] = ()):
        self.names = tuple(names)
        self.untrained = tuple(untrained)
        self._columns: dict[str, np.ndarray] = {}
        for j, name in enumerate(self.names):
            self._columns[name] = np.asarray(mean[:, j], dtype=np.float64)
        for j, name in enumerate(self.names):
            self._columns[f"{name}_error"] = np.asarray(error[:, j], dtype=np.float64)
        self._columns["prior_only"] = np.asarray(prior_only, dtype=bool)
        self._columns["n_out_of_range"] = np.asarray(n_out_of_range, dtype=np.int64)
        for name in self.untrained:
            self._columns[f"{name}_untrained"] = np.ones(len(self._columns["prior_only"]), dtype=bool)
        self.attention = attention

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._columns[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in this result; columns: {list(self._columns)}") from None

    def __contains__(self, key) -> bool:
        return key in self._columns

    def __len__(self) -> int:
        return len(self._columns["prior_only"])

    def keys(self) -> list[str]:
        return list(self._columns)

    def to_dict(self) -> dict[str, np.ndarray]:
        return dict(self._columns)

    def to_records(self) -> np.recarray:
        """A NumPy record array, one record per star."""
        return np.rec.fromarrays(list(self._columns.values()), names=list(self._columns))

    def to_pandas(self):
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - pandas is optional
            raise ImportError("Prediction.to_pandas() needs pandas; use to_dict() or to_records() without it") from exc
        return pd.DataFrame(self._columns)

    def __repr__(self) -> str:
        flag = f", untrained={list(self.untrained)}" if self.untrained else ""
        return f"Prediction({len(self)} stars, requests={list(self.names)}{flag})"


# ====================================================================================== object shell
class Perception:
    """Validated, standardised inputs of N stars for one model. Stateless: each :meth:`request` runs the
    encoder again chunk by chunk, so memory is bounded whatever N (request every token you need in one call)."""

    def __init__(self, model: "StellarModel", inputs: PreparedInputs, chunk_size: int | None = None):
        self.model = model
        self.inputs = inputs
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return self.inputs.values.shape[0]

    @property
    def prior_only(self) -> np.ndarray:
        """bool [N]: stars with no real input token (answered from the prior)."""
        return self.inputs.prior_only

    @property
    def out_of_range(self) -> np.ndarray:
        """bool [N, T]: inputs outside the training range, aligned with :meth:`input_names` (values made missing
        by ``extreme="missing"`` have no slot: they are counted in ``inputs.extreme``)."""
        return self.inputs.out_of_range

    def input_names(self) -> list[list[str]]:
        """Per star, the names of its context slots ('[pad]' for padding), in model order."""
        return self.model.vocab.names_of(self.inputs.tokens)

    def out_of_range_names(self) -> list[list[str]]:
        """Per star, the names of its inputs outside the training range."""
        names = self.model.vocab.names_of(np.where(self.inputs.out_of_range, self.inputs.tokens, 0))
        return [[n for n in row if n != "[pad]"] for row in names]

    def request(self, names, return_attention: bool = False, progress: bool = False,
                allow_untrained: bool = False) -> Prediction:
        """Predict tokens ``names`` (one name, or a list of names or ids; all decoded in one call).

        Only tokens the model was trained to output (``model.vocab.outputs``) may be requested: any other (the
        paper's withheld ``bprp`` and ``jk``) raises :class:`UntrainedOutputError` listing the trained outputs,
        because its answer and error bar are not calibrated. ``allow_untrained=True`` answers it anyway,
        flagged in ``res.untrained`` and ``res["<name>_untrained"]``. Unknown names raise
        :class:`~stellarfm_jax.vocab.UnknownTokenError` with the closest valid names.

        Returns a :class:`Prediction` in physical units; with ``return_attention`` its ``attention`` holds
        ``{"encoder": [block k: [N, h_k, T, T+1]], "decoder": [block k: [N, h_k, R, T+1]], "input_names",
        "request_names"}`` (bias slot last; see :func:`attention_without_bias`).
        """
        ids, untrained = request_ids(self.model.vocab, names, allow_untrained)
        model = self.model
        requests = jnp.asarray(ids)
        inp = self.inputs
        fn = lambda v, t: model.predict_standardized(v, t, requests, return_attention)  # noqa: E731
        out = map_chunks(fn, (inp.values, inp.tokens), self.chunk_size, progress=progress)
        mean_z, logvar = out[0], out[1]
        mean = model.vocab.destandardize(mean_z, ids[None, :])
        error = model.vocab.destandardize_error(np.sqrt(np.exp(logvar.astype(np.float64))), ids[None, :])
        attention = None
        if return_attention:
            attention = {
                "encoder": list(out[3]), "decoder": list(out[4]),
                "input_names": self.input_names(), "request_names": model.vocab.names_of(ids),
            }
        return Prediction(model.vocab.names_of(ids), mean, error, inp.prior_only, inp.n_out_of_range, attention,
                          untrained=model.vocab.names_of(ids[untrained]))

    def embedding(self, progress: bool = False) -> np.ndarray:
        """float32 [N, D]: masked mean of the encoder output over each star's real tokens (NaN if none)."""
        model = self.model
        requests = jnp.ones((1,), jnp.int32)  # the decoder output is not used
        out = map_chunks(lambda v, t: model.predict_standardized(v, t, requests)[2],
                         (self.inputs.values, self.inputs.tokens), self.chunk_size, progress=progress)
        return out

    def perception(self) -> np.ndarray:
        """float32 [N, T, D]: the encoder output (N x T x D x 4 bytes; prefer :meth:`embedding` for big N)."""
        model = self.model
        return map_chunks(lambda v, t: encode(model.params, v, t, spec=model.spec),
                          (self.inputs.values, self.inputs.tokens), self.chunk_size)

    def attention(self) -> list[np.ndarray]:
        """Encoder attention, one [N, h_k, T, T+1] array per block (bias slot last)."""
        first_output = self.model.vocab.outputs[0] if self.model.vocab.outputs else self.model.vocab.names[0]
        request = self.request([first_output], return_attention=True, allow_untrained=True)  # decoder unused
        return request.attention["encoder"]


class StellarModel:
    """A trained model: params, architecture, vocabulary and metadata.

    >>> model = StellarModel.load("run/model")
    >>> p = model.perceive([[4700.0, 2.5], [5500.0, 4.2]], ["teff", "logg"])
    >>> res = p.request(["m_h", "jh"])
    >>> res["m_h"], res["m_h_error"]
    """

    def __init__(self, params, model_config: ModelConfig, vocab: Vocabulary, metadata: dict | None = None):
        model_config.validate()
        self.model_config = model_config
        self.vocab = vocab
        self.metadata = dict(metadata or {})
        self.spec = ModelSpec(model_config, vocab.size)
        self.params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
        table = self.params["embedding"]["embeddings"]
        chex.assert_shape(table, (vocab.size + 1, model_config.embedding_dim))
        self.token_range = _token_range(self.metadata, vocab.size)

    @classmethod
    def from_params(cls, params, model_config: ModelConfig, vocab: Vocabulary, metadata: dict | None = None):
        return cls(params, model_config, vocab, metadata)

    @classmethod
    def load(cls, path, compute_dtype: str | None = None) -> "StellarModel":
        """Load a saved-model directory, a training workdir holding one at ``model/``, or a model shipped with the
        package by its name (``StellarModel.load("small")``, as every command's ``--model`` reads it).

        ``compute_dtype`` overrides the stored one (e.g. "float32" on a CPU for a model trained in bfloat16).
        """
        path = resolve_model_dir(path)
        params, config, vocab, metadata = load_model(path)
        if compute_dtype is not None:
            config = dataclasses.replace(config, compute_dtype=compute_dtype)
        return cls(params, config, vocab, metadata)

    def save(self, path) -> pathlib.Path:
        """Write a model directory (a loaded model saves again; atomic)."""
        return save_model(path, jax.device_get(self.params), self.model_config, self.vocab, self.metadata)

    @property
    def context_length(self) -> int:
        return self.model_config.context_length

    def predict_standardized(self, values, tokens, requests, return_attention: bool = False):
        """One device call on standardised arrays: :func:`predict` (or :func:`predict_with_attention`) with this
        model's parameters. The hook that :class:`Perception` calls, so a subclass (an adapted model) can
        change how requests are answered."""
        fn = predict_with_attention if return_attention else predict
        return fn(self.params, values, tokens, requests, spec=self.spec)

    def perceive(self, values, names=None, errors=None, *, overflow: str = "error", extreme: str = "error",
                 chunk_size: int | None = None, star_offset: int = 0) -> Perception:
        """Validate and standardise the inputs of N stars (see :func:`stellarfm_jax.inputs.prepare_inputs`).

        values: [N, n] or [n] numbers (NaN = missing), or a pandas DataFrame (its column names are the
        token names when ``names`` is None). names: n names or ids for every star, or [N, n] per star.
        errors: optional measurement errors of the values' shape (physical units), used by the ranking of
        ``overflow="keep_informative"`` (an error given as NaN or inf ranks last).

        Refused with a :class:`~stellarfm_jax.cli.BadInputError` naming the star, column and token: unknown
        names (with the closest valid ones), no names, the same token twice in one star, non-numeric or boolean
        values, infinite values, more real tokens than the context length (unless
        ``overflow="keep_informative"``), and values more than ``MAX_ABS_Z`` (1e6) robust standard deviations
        from the training median, which would overflow the network into NaN (unless ``extreme="missing"``:
        they become missing and count in ``n_out_of_range``). Values beyond the training range are flagged,
        not refused. ``star_offset`` is added to star numbers in messages (a caller feeding chunks).
        """
        if names is None:
            if hasattr(values, "columns"):
                names = [str(c) for c in values.columns]
            else:
                raise ValueError("names are required unless values is a DataFrame with token-name columns")
        if hasattr(values, "to_numpy"):
            values = values.to_numpy()
        inputs = prepare_inputs(self.vocab, values, names, errors, context_length=self.context_length,
                                overflow=overflow, token_range=self.token_range, extreme=extreme,
                                star_offset=star_offset)
        return Perception(self, inputs, chunk_size)

    def invert(self, observed, observed_names, observed_errors=None, **kwargs):
        """Fit free input tokens to an observed spectrum; see :func:`stellarfm_jax.inversion.invert`."""
        from .inversion import invert

        return invert(self, observed, observed_names, observed_errors, **kwargs)

    def __repr__(self) -> str:
        c = self.model_config
        return (f"StellarModel(schema={self.vocab.schema!r}, tokens={self.vocab.size}, D={c.embedding_dim}, "
                f"context={c.context_length}, dtype={c.compute_dtype})")


def _token_range(metadata: dict, vocab_size: int):
    spec = metadata.get("token_range")
    if not spec:
        return None
    lo = np.asarray(spec["min"], dtype=np.float64)
    hi = np.asarray(spec["max"], dtype=np.float64)
    if lo.shape != (vocab_size,) or hi.shape != (vocab_size,):
        raise ValueError(f"metadata token_range needs min and max of length {vocab_size}, got {lo.shape}, {hi.shape}")
    # A token never seen in training has NaN bounds: fall back to no bound rather than flag everything.
    return np.where(np.isfinite(lo), lo, -np.inf), np.where(np.isfinite(hi), hi, np.inf)
