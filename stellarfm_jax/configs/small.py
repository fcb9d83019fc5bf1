"""The CPU default: the model we can train on the ~32k-star real training split in about 1.8 hours on two
idle CPU cores (the README's main command; exactly the shipped model's recipe).

Choices against the paper config, and why:
- D=64, 8 heads, dense 256 / 512: ~5x fewer FLOPs per star than the paper's model, so a CPU sees
  enough epochs for the labels (not only the spectra) to be learned.
- the ``xp_coarse`` schema (57 flux tokens of 12 nm, flux relative to the G band, of order 1): a whole
  spectrum plus the colours is 60 tokens and fits the 64-slot context (docs/data.md).
- task-aware contexts for 80% of the stars (sampling.py): labels -> the spectrum (25%), the whole
  spectrum + colours -> labels (15%), the colours and a random number of flux tokens -> labels (30%),
  one half of the spectrum -> the other (10%); the paper's random subsets for the rest. Against the same
  recipe with random subsets only, every validation label and the labels -> spectrum residual were better
  at equal epochs; the sparse template lowered the scatter from 10 flux tokens + colours by 12-20%
  (docs/evaluation.md).
- 4 requests per star per step (drawn without replacement): the same objective with 4x the
  supervision per encoder pass (requests do not attend to each other).
- label tokens are requested 4x as often as a flux token: the flux tokens would otherwise take most
  of the requests while the labels are what users ask for most.
- lr 1e-3 with one cosine cycle over the run (SGDR period = epochs), since the run is short.
- no dropout: at this size and length the model under-fits rather than over-fits.
- micro-batches of 32 (the CPU speed option, same objective); no length buckets, because a bucket caps
  its rows' context and a template shows whole token groups. ~21-29 s per epoch on 2 idle cores, 250
  epochs 1.8 h (Zen 5, 2026-12-02; the shipped model's TRAINING.md; a Zen 4 host ran the recipe before it at ~50 s per epoch).
"""

from stellarfm_jax.config import Config, DataConfig, ModelConfig, TrainConfig

EPOCHS = 250


def get_config() -> Config:
    return Config(
        name="small",
        model=ModelConfig(
            embedding_dim=64, encoder_heads=8, encoder_dense=256, decoder_heads=8, decoder_dense=512,
            dropout=0.0, context_length=64, compute_dtype="float32",
        ),
        train=TrainConfig(
            batch_size=256, epochs=EPOCHS, learning_rate=1e-3, min_learning_rate=1e-6, sgdr_period_epochs=EPOCHS,
            weight_decay=0.01, max_padding=60, outputs_per_star=4,
            output_weights=(("teff", 4.0), ("logg", 4.0), ("m_h", 4.0), ("alpha_m", 4.0), ("logebv", 4.0)),
            eval_every_epochs=5, checkpoint_every_epochs=5, keep_checkpoints=2, best_metric="label_scatter",
            val_max_stars=4096,
            # CPU speed option (the same objective, docs/performance.md): gradient accumulation over
            # cache-sized micro-batches.
            micro_batch_size=32, length_buckets=1,
            task_probabilities=(
                ("labels_to_spectrum", 0.25), ("spectrum_to_labels", 0.15), ("sparse_spectrum_to_labels", 0.3),
                ("half_spectrum", 0.1),
            ),
        ),
        data=DataConfig(schema="xp_coarse"),
    )
