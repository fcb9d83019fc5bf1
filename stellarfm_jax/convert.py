"""Weight import from, and export to, the original PyTorch release (DESIGN §6; original_spec §1-§3).

An original release is a folder with ``weights.pt`` (a torch pickle of ``{"model_state_dict",
"optimizer_state_dict", "optimizer", "epoch"}``, or a bare state_dict) and ``config.json``
(``nn_config``, ``tokenizer_config``, ``norm_config``). Import turns it into a stellarfm_jax model
directory (``saved_model`` format) whose predictions equal the original's to float32 precision::

    python -m stellarfm_jax.convert --torch-dir model_torch/ --out my_model/
    python -m stellarfm_jax.convert --export my_model/ --out model_torch_export/   # the inverse

The mapping is one explicit table (``import_table``): one row per torch key, each naming its expected
torch shape, the Flax parameter paths it fills and the two array transforms. Every torch key is consumed
exactly once and every Flax parameter is filled exactly once; anything else is an error that names the
key and the expected shape.

torch is optional: it is imported lazily, only to read or write ``weights.pt``. ``convert_state_dict``
accepts NumPy arrays as well as torch tensors.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import sys
import time
import warnings
from typing import Callable, Mapping

import numpy as np

from . import __version__
from . import cli
from .errors import BadFileError, MissingFileError, OutputExistsError, require
from .config import ModelConfig
from .formats import sha256_file
from .saved_model import flatten_params, load_model, resolve_model_dir, save_model, unflatten_params
from .schemas import PAPER_WITHHELD_OUTPUTS, paper_groups, paper_names
from .vocab import Vocabulary

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
# The original writes this key with a typo; accept the corrected spelling too.
BACKEND_KEYS = ("backend_framewoark", "backend_framework")
SUPPORTED_ACTIVATIONS = ("gelu",)  # our model is exact-erf GELU throughout


class ConversionError(BadFileError):
    """The torch state_dict or config does not match the architecture it is converted to."""


# ---------------------------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class TableRow:
    """One torch key <-> one or more Flax parameters.

    ``to_flax(torch_array) -> tuple of arrays`` (one per ``flax_paths``) and
    ``to_torch(*flax_arrays) -> torch_array`` are exact inverses (transposes, splits and reshapes only).
    """

    torch_key: str
    torch_shape: tuple[int, ...]
    flax_paths: tuple[str, ...]
    to_flax: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_torch: Callable[..., np.ndarray]


def _same(x):
    return (x,)


def _identity(x):
    return x


def _linear_rows(torch_prefix: str, flax_prefix: str, fan_in: int, fan_out: int) -> list[TableRow]:
    """torch Linear weight (out, in) <-> Flax Dense kernel (in, out): a transpose."""
    return [
        TableRow(f"{torch_prefix}.weight", (fan_out, fan_in), (f"{flax_prefix}/kernel",), lambda w: (w.T,), lambda k: k.T),
        TableRow(f"{torch_prefix}.bias", (fan_out,), (f"{flax_prefix}/bias",), _same, _identity),
    ]


def _attention_rows(torch_prefix: str, flax_prefix: str, features: int, heads: int) -> list[TableRow]:
    """torch MultiheadAttention(add_bias_kv=True) <-> our BiasKVAttention.

    torch stacks Q, K, V as rows [0:D], [D:2D], [2D:3D] of in_proj_weight (3D, D) and splits the
    projected feature axis head-major (feature = head * d + j). A per-head kernel is therefore
    ``W_q.T.reshape(D, h, d)``; out_proj (D, D) acting on the concatenated heads is
    ``W_o.T.reshape(h, d, D)``. bias_k / bias_v (1, 1, D) are already projected: reshape to (h, d).
    """
    D, h = features, heads
    d = D // h
    a = f"{flax_prefix}/attention"
    t = f"{torch_prefix}.attention"

    def split_weight(w):
        return tuple(w[i * D : (i + 1) * D].T.reshape(D, h, d) for i in range(3))

    def join_weight(wq, wk, wv):
        return np.concatenate([k.reshape(D, D).T for k in (wq, wk, wv)], axis=0)

    def split_bias(b):
        return tuple(b[i * D : (i + 1) * D].reshape(h, d) for i in range(3))

    def join_bias(bq, bk, bv):
        return np.concatenate([b.reshape(D) for b in (bq, bk, bv)], axis=0)

    return [
        TableRow(f"{t}.in_proj_weight", (3 * D, D), (f"{a}/query_kernel", f"{a}/key_kernel", f"{a}/value_kernel"),
                 split_weight, join_weight),
        TableRow(f"{t}.in_proj_bias", (3 * D,), (f"{a}/query_bias", f"{a}/key_bias", f"{a}/value_bias"),
                 split_bias, join_bias),
        TableRow(f"{t}.bias_k", (1, 1, D), (f"{a}/bias_k",), lambda b: (b.reshape(h, d),), lambda b: b.reshape(1, 1, D)),
        TableRow(f"{t}.bias_v", (1, 1, D), (f"{a}/bias_v",), lambda b: (b.reshape(h, d),), lambda b: b.reshape(1, 1, D)),
        TableRow(f"{t}.out_proj.weight", (D, D), (f"{a}/out_kernel",),
                 lambda w: (w.T.reshape(h, d, D),), lambda k: k.reshape(D, D).T),
        TableRow(f"{t}.out_proj.bias", (D,), (f"{a}/out_bias",), _same, _identity),
    ]


def _block_rows(torch_prefix: str, flax_prefix: str, features: int, heads: int, dense: int) -> list[TableRow]:
    """One post-LN transformer block, in the original's state_dict order."""
    rows = _attention_rows(torch_prefix, flax_prefix, features, heads)
    rows += _linear_rows(f"{torch_prefix}.dense_1", f"{flax_prefix}/dense_1", features, dense)
    rows += _linear_rows(f"{torch_prefix}.dense_2", f"{flax_prefix}/dense_2", dense, features)
    for ln in ("layernorm_1", "layernorm_2"):
        rows += [
            TableRow(f"{torch_prefix}.{ln}.weight", (features,), (f"{flax_prefix}/{ln}/scale",), _same, _identity),
            TableRow(f"{torch_prefix}.{ln}.bias", (features,), (f"{flax_prefix}/{ln}/bias",), _same, _identity),
        ]
    return rows


def import_table(model_config: ModelConfig, vocab_size: int) -> list[TableRow]:
    """The complete torch <-> Flax mapping for ``model_config`` with V = ``vocab_size`` real tokens,
    in the original's state_dict key order (84 rows for the original's 2 + 3 blocks).

    Head counts are not stored in the weights: they follow the original's halving rule
    (``ModelConfig.encoder_block_shapes`` / ``decoder_block_shapes``)."""
    D = model_config.embedding_dim
    rows = [
        TableRow("embedding_layer.embeddings", (vocab_size + 1, D), ("embedding/embeddings",), _same, _identity),
        TableRow("embedding_layer.bias", (vocab_size + 1, D), ("embedding/bias",), _same, _identity),
    ]
    for k, (heads, dense) in enumerate(model_config.encoder_block_shapes()):
        rows += _block_rows(f"torch_encoder.encoder_transformer_block_{k + 1}", f"encoder_blocks_{k}", D, heads, dense)
    for k, (heads, dense) in enumerate(model_config.decoder_block_shapes()):
        rows += _block_rows(f"torch_decoder.decoder_transformer_block_{k + 1}", f"decoder_blocks_{k}", D, heads, dense)
    widths = [D] + model_config.head_widths()
    for k in range(len(widths) - 1):  # the original numbers its head layers decoder_dense_3..6
        rows += _linear_rows(f"torch_decoder.decoder_dense_{k + 3}", f"head_{k}", widths[k], widths[k + 1])
    rows += _linear_rows("torch_decoder.decoder_out", "mean_out", widths[-1], 1)
    rows += _linear_rows("torch_decoder.decoder_logvar_out", "logvar_out", widths[-1], 1)
    return rows


# ---------------------------------------------------------------------------------------------- state dicts
def _to_numpy(key: str, value) -> np.ndarray:
    """A torch tensor or array-like -> float32 NumPy array (no torch import needed)."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        if not value.is_floating_point():
            raise ConversionError(f"torch key {key!r}: expected a floating-point tensor, got dtype {value.dtype}")
        value = value.float().numpy()
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise ConversionError(f"torch key {key!r}: expected a floating-point array, got dtype {array.dtype}")
    return array.astype(np.float32)


def convert_state_dict(state_dict: Mapping[str, object], model_config: ModelConfig, vocab_size: int) -> dict:
    """Original torch state_dict (84 keys for the paper architecture) -> our Flax params tree.

    Args:
      state_dict: key -> torch.Tensor or array, as ``StellarPerceptronTorchModel.state_dict()``.
      model_config: the architecture (``model_config_from_original`` for a release's config.json).
      vocab_size: V, the number of real tokens (the embedding tables have V + 1 rows).
    Returns:
      nested dict of float32 NumPy arrays, the ``params`` of ``StellarPerceptron(model_config, V)``.
    Raises:
      ConversionError naming every missing key (with its expected shape), every unexpected key,
      and any tensor whose shape differs from the table's.
    """
    table = import_table(model_config, vocab_size)
    expected = {row.torch_key: row.torch_shape for row in table}
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing keys: " + ", ".join(f"{k} (expected shape {expected[k]})" for k in missing))
        if extra:
            parts.append("unexpected keys: " + ", ".join(f"{k} (shape {tuple(np.shape(state_dict[k]))})" for k in extra))
        raise ConversionError(
            f"state_dict does not match the architecture {_describe(model_config, vocab_size)}: " + "; ".join(parts)
        )
    flat: dict[str, np.ndarray] = {}
    for row in table:
        array = _to_numpy(row.torch_key, state_dict[row.torch_key])
        if array.shape != row.torch_shape:
            raise ConversionError(
                f"torch key {row.torch_key!r}: expected shape {row.torch_shape}, got {array.shape} "
                f"(architecture {_describe(model_config, vocab_size)})"
            )
        if not np.all(np.isfinite(array)):
            raise ConversionError(f"torch key {row.torch_key!r} holds non-finite values (NaN or inf)")
        pieces = row.to_flax(array)
        for path, piece in zip(row.flax_paths, pieces, strict=True):
            if path in flat:  # a table bug, never a user error
                raise AssertionError(f"import table fills {path} twice")
            flat[path] = np.ascontiguousarray(piece, dtype=np.float32)
    return unflatten_params(flat)


def export_state_dict(params, model_config: ModelConfig) -> "collections.OrderedDict[str, object]":
    """Our params tree -> an ``OrderedDict`` of torch tensors with the original's keys, in its order,
    loadable with ``StellarPerceptronTorchModel.load_state_dict(..., strict=True)``.

    Raises ConversionError if ``params`` lacks a parameter, has one the table does not know, or has
    a wrongly shaped one (naming the Flax path and the expected shape)."""
    import torch

    flat = {k: np.asarray(v, dtype=np.float32) for k, v in flatten_params(params).items()}
    if "embedding/embeddings" not in flat:
        raise ConversionError("params have no 'embedding/embeddings' table; is this a StellarPerceptron params tree?")
    vocab_size = flat["embedding/embeddings"].shape[0] - 1
    table = import_table(model_config, vocab_size)
    expected = {}
    for row in table:
        shapes = [np.shape(p) for p in row.to_flax(np.zeros(row.torch_shape, np.float32))]
        expected.update(zip(row.flax_paths, shapes))
    missing = [p for p in expected if p not in flat]
    extra = [p for p in flat if p not in expected]
    if missing or extra:
        raise ConversionError(
            f"params do not match the architecture {_describe(model_config, vocab_size)}: "
            f"missing {[(p, expected[p]) for p in missing]}, unexpected {extra}"
        )
    out = collections.OrderedDict()
    for row in table:
        for path in row.flax_paths:
            if flat[path].shape != expected[path]:
                raise ConversionError(f"param {path!r}: expected shape {expected[path]}, got {flat[path].shape}")
        array = row.to_torch(*(flat[p] for p in row.flax_paths))
        out[row.torch_key] = torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True))
    return out


def _describe(model_config: ModelConfig, vocab_size: int) -> str:
    c = model_config
    return (
        f"(V={vocab_size}, D={c.embedding_dim}, encoder {c.encoder_block_shapes()}, "
        f"decoder {c.decoder_block_shapes()} as (heads, dense))"
    )


# ---------------------------------------------------------------------------------------------- config.json
def _nn_value(nn_config: dict, key: str):
    if key not in nn_config:
        raise ConversionError(f"config.json nn_config lacks {key!r}")
    return nn_config[key]


def model_config_from_original(cfg: dict) -> ModelConfig:
    """The original's ``config.json`` (its ``nn_config``) -> our ``ModelConfig``.

    The original always has 2 encoder and 3 decoder blocks with the head/dense halving rule, which
    ``ModelConfig`` shares. It has separate encoder and decoder dropout rates; ours is one rate (it
    only matters for fine-tuning), so the encoder's is kept and a difference is warned about.
    """
    nn_config = cfg.get("nn_config", cfg)
    for key in ("embedding_activation", "encoder_activation", "decoder_activation"):
        act = _nn_value(nn_config, key)
        if act not in SUPPORTED_ACTIVATIONS:
            raise ConversionError(
                f"config.json nn_config[{key!r}] = {act!r}: only {SUPPORTED_ACTIVATIONS} is supported "
                "(None would mean ReLU in the original)"
            )
    enc_drop = float(_nn_value(nn_config, "encoder_dropout_rate"))
    dec_drop = float(_nn_value(nn_config, "decoder_dropout_rate"))
    if enc_drop != dec_drop:
        warnings.warn(
            f"the original uses encoder dropout {enc_drop} and decoder dropout {dec_drop}; stellarfm_jax has one "
            f"rate and keeps {enc_drop} (inference is unaffected)",
            stacklevel=2,
        )
    model_config = ModelConfig(
        embedding_dim=int(_nn_value(nn_config, "embedding_dim")),
        encoder_heads=int(_nn_value(nn_config, "encoder_head_num")),
        encoder_dense=int(_nn_value(nn_config, "encoder_dense_num")),
        decoder_heads=int(_nn_value(nn_config, "decoder_head_num")),
        decoder_dense=int(_nn_value(nn_config, "decoder_dense_num")),
        dropout=enc_drop,
        context_length=int(_nn_value(nn_config, "context_length")),
    )
    model_config.validate()
    return model_config


def _groups_and_outputs(names: tuple[str, ...]) -> tuple[list[str], list[str], str]:
    """Roles of the tokens: the paper schema's where names are the paper's, 'other' for unknown names."""
    paper = dict(zip(paper_names(), paper_groups()))
    groups = [paper.get(n, "other") for n in names]
    outputs = [n for n in names if n not in PAPER_WITHHELD_OUTPUTS]
    schema = "paper" if list(names) == paper_names() else "original"
    return groups, outputs, schema


def vocabulary_from_original_config(cfg: dict, embedding_rows: int | None = None) -> Vocabulary:
    """The original's ``tokenizer_config`` + ``norm_config`` -> our ``Vocabulary``.

    ``norm_config._input_mean`` / ``_input_std`` are indexed by token id (index 0 = padding), so token
    ``vocabs[i]`` (id ``vocab_tokens[i]``) gets centre ``_input_mean[id]`` and scale ``_input_std[id]``.
    Outputs and groups follow the paper schema (``bprp`` and ``jk`` withheld from training outputs).

    Args:
      embedding_rows: if given, the number of rows of the release's embedding table (V + 1); a
        vocabulary of another size is refused.
    """
    for section in ("tokenizer_config", "norm_config"):
        if section not in cfg:
            raise ConversionError(f"config.json lacks the {section!r} section")
    tok, norm = cfg["tokenizer_config"], cfg["norm_config"]
    if "vocabs" not in tok:
        raise ConversionError("config.json tokenizer_config lacks 'vocabs'")
    names = tuple(str(n) for n in tok["vocabs"])
    v = len(names)
    tokens = [int(t) for t in tok.get("vocab_tokens", range(1, v + 1))]
    if tokens != list(range(1, v + 1)):
        raise ConversionError(
            f"config.json tokenizer_config.vocab_tokens must be 1..{v} in vocabulary order (token = 1 + index); "
            f"got {tokens[:5]}... of length {len(tokens)}"
        )
    if embedding_rows is not None and embedding_rows != v + 1:
        raise ConversionError(
            f"config.json has {v} tokens, so the embedding needs {v + 1} rows (with padding), but the weights' "
            f"embedding_layer.embeddings has {embedding_rows} rows"
        )
    arrays = {}
    for key in ("_input_mean", "_input_std"):
        if key not in norm:
            raise ConversionError(f"config.json norm_config lacks {key!r}")
        arrays[key] = np.asarray(norm[key], dtype=np.float64)
        if arrays[key].shape != (v + 1,):
            raise ConversionError(
                f"config.json norm_config.{key} must have {v + 1} entries (indexed by token id, 0 = padding), "
                f"got {arrays[key].shape[0] if arrays[key].ndim == 1 else arrays[key].shape}"
            )
    standardized = np.asarray(norm.get("_input_standardized", [False] + [True] * v), dtype=bool)
    not_standardized = [n for n, s in zip(names, standardized[1:]) if not s]
    if not_standardized:
        # The original would compute these statistics from whatever data it is given next; a release
        # must carry them.
        raise ConversionError(f"config.json has no standardisation statistics for tokens {not_standardized}")
    groups, outputs, schema = _groups_and_outputs(names)
    ids = np.arange(1, v + 1)
    return Vocabulary(names, arrays["_input_mean"][ids], arrays["_input_std"][ids], outputs, groups, schema)


def original_config(model_config: ModelConfig, vocab: Vocabulary, backend: str | None = None) -> dict:
    """Our model config + vocabulary -> the original's ``config.json`` dict (the inverse of the two
    functions above), so the original code can load an exported model."""
    if model_config.encoder_blocks != 2 or model_config.decoder_blocks != 3:
        raise ConversionError(
            f"the original code builds 2 encoder and 3 decoder blocks; this model has "
            f"{model_config.encoder_blocks} and {model_config.decoder_blocks}"
        )
    if backend is None:
        import torch

        backend = f"torch-{torch.__version__.split('+')[0]}"
    c = model_config
    nn_config = {
        "backend_framewoark": backend,  # sic: the original's key
        "context_length": c.context_length,
        "embedding_dim": c.embedding_dim,
        "embedding_activation": "gelu",
        "encoder_head_num": c.encoder_heads,
        "encoder_dense_num": c.encoder_dense,
        "encoder_dropout_rate": c.dropout,
        "encoder_activation": "gelu",
        "decoder_head_num": c.decoder_heads,
        "decoder_dense_num": c.decoder_dense,
        "decoder_dropout_rate": c.dropout,
        "decoder_activation": "gelu",
    }
    return {
        "nn_config": nn_config,
        "tokenizer_config": {"vocabs": list(vocab.names), "vocab_tokens": list(range(1, vocab.size + 1))},
        "norm_config": {
            "_input_mean": [float(x) for x in vocab.centre_by_id],
            "_input_std": [float(x) for x in vocab.scale_by_id],
            "_input_standardized": [False] + [True] * vocab.size,
        },
    }


# ---------------------------------------------------------------------------------------------- files
def load_torch_weights(path) -> tuple[dict, dict]:
    """Read ``weights.pt`` with ``torch.load(weights_only=True)`` on the CPU.

    Returns (state_dict, info): the model state_dict from the original's container
    (``model_state_dict`` + ``optimizer_state_dict``, ``optimizer``, ``epoch``) or the file itself if it
    is a bare state_dict; ``info`` holds ``epoch`` and ``optimizer`` when present."""
    torch = require("torch", "reading weights.pt")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a dict (a state_dict or the original's container), got {type(obj).__name__}")
    if "model_state_dict" in obj:
        info = {k: obj[k] for k in ("epoch", "optimizer") if k in obj and isinstance(obj[k], (int, str))}
        return dict(obj["model_state_dict"]), info
    return dict(obj), {}


def convert_release(torch_dir, out_dir, weights_file: str = WEIGHTS_FILE, config_file: str = CONFIG_FILE):
    """Convert an original release folder (``weights.pt`` + ``config.json``) into a stellarfm_jax model
    directory at ``out_dir`` (written atomically). Returns the output path.

    Metadata records the source file's sha256, the conversion time and the original backend string."""
    start = time.perf_counter()
    torch_dir = pathlib.Path(torch_dir)
    weights_path, config_path = torch_dir / weights_file, torch_dir / config_file
    for path in (weights_path, config_path):
        if not path.is_file():
            raise MissingFileError(f"{path} not found: an original release folder holds {weights_file} and {config_file}")
    cfg = json.loads(config_path.read_text())
    model_config = model_config_from_original(cfg)
    state_dict, info = load_torch_weights(weights_path)
    embedding = state_dict.get("embedding_layer.embeddings")
    if embedding is None:
        raise ConversionError(
            f"{weights_path}: missing key embedding_layer.embeddings (expected shape (V+1, {model_config.embedding_dim}))"
        )
    vocab = vocabulary_from_original_config(cfg, embedding_rows=int(np.shape(embedding)[0]))
    params = convert_state_dict(state_dict, model_config, vocab.size)
    backend = next((cfg.get("nn_config", {})[k] for k in BACKEND_KEYS if k in cfg.get("nn_config", {})), None)
    metadata = {
        "source": "original PyTorch release (stellarperceptron)",
        "source_file": str(weights_path.resolve()),
        "source_sha256": sha256_file(weights_path),
        "config_sha256": sha256_file(config_path),
        "original_backend": backend,
        "original_epoch": info.get("epoch"),
        "original_optimizer": info.get("optimizer"),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "converted_by": f"stellarfm_jax {__version__}",
    }
    metadata["conversion_seconds"] = round(time.perf_counter() - start, 3)
    return save_model(out_dir, params, model_config, vocab, metadata)


def export_release(model_dir, torch_dir, epoch: int = -1) -> pathlib.Path:
    """Write a stellarfm_jax model directory as an original release folder (``weights.pt`` in the
    original's container + ``config.json``) that ``StellarPerceptron.load`` of the original can read.
    The optimiser state is not exported (an empty dict). Refuses to overwrite an existing config.json."""
    torch = require("torch", "writing weights.pt")

    params, model_config, vocab, metadata = load_model(model_dir)
    torch_dir = pathlib.Path(torch_dir)
    if (torch_dir / CONFIG_FILE).exists():
        raise OutputExistsError(f"{torch_dir / CONFIG_FILE} exists; choose an empty folder")
    cfg = original_config(model_config, vocab)
    state_dict = export_state_dict(params, model_config)
    torch_dir.mkdir(parents=True, exist_ok=True)
    container = {"model_state_dict": state_dict, "optimizer_state_dict": {}, "optimizer": "AdamW", "epoch": int(epoch)}
    torch.save(container, torch_dir / WEIGHTS_FILE)
    (torch_dir / CONFIG_FILE).write_text(json.dumps(cfg, indent=4))
    return torch_dir


# ---------------------------------------------------------------------------------------------- CLI
def build_parser():
    p = cli.parser("convert", "Import the original PyTorch release (weights.pt + config.json) as a stellarfm_jax\n"
                   "model directory, or export a model back to the original's format (--export).\n"
                   "Needs the 'torch' extra.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--torch-dir", metavar="DIR", help="folder with the original's weights.pt and config.json")
    cli.add_model_arg(source, flag="--export", required=False, what="a model to export to the original's format")
    cli.add_out_arg(p, "output folder: the model directory (import) or the torch release folder (export)")
    p.add_argument("--weights", default=WEIGHTS_FILE, metavar="FILE", help="weights file name inside --torch-dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        if args.torch_dir:
            out = convert_release(args.torch_dir, args.out, weights_file=args.weights)
            _, model_config, vocab, metadata = load_model(out)
            print(f"converted {args.torch_dir} -> {out} ({vocab.size} tokens, embedding_dim "
                  f"{model_config.embedding_dim}, {metadata['conversion_seconds']} s)")
        else:
            out = export_release(resolve_model_dir(args.export), args.out)
            print(f"exported {args.export} -> {out / WEIGHTS_FILE} and {out / CONFIG_FILE}")

    return cli.run_command(work)


if __name__ == "__main__":
    sys.exit(main())
