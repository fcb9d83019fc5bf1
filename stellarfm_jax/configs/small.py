"""The CPU default: the model we can train on the ~32k-star real training split in about 1.1 hours on
two idle CPU cores (the README's main command).

Choices against the paper config, and why:
- D=64, 8 heads, dense 256 / 512: ~5x fewer FLOPs per star than the paper's model, so a CPU sees
  enough epochs for the labels (not only the spectra) to be learned.
- 4 requests per star per step (drawn without replacement): the same objective with 4x the
  supervision per encoder pass (requests do not attend to each other).
- label tokens are requested 4x as often as a flux token: ~85 flux tokens would otherwise take 90%
  of the requests while the labels are what users ask for most.
- lr 1e-3 with one cosine cycle over the run (SGDR period = epochs), since the run is short.
- no dropout: at this size and length the model under-fits rather than over-fits.
- micro-batches of 32 and 4 length buckets: the CPU speed options (same objective); 150 epochs took 1.06 h of
  epoch time on 2 idle cores (Zen 4, 2026-11-29; the shipped model's TRAINING.md).
"""

from stellarfm_jax.config import Config, DataConfig, ModelConfig, TrainConfig

EPOCHS = 150


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
            # CPU speed options (the same objective, docs/performance.md): gradient accumulation over
            # cache-sized micro-batches and stratified padding with length buckets (~1.5-2x on 2 cores).
            micro_batch_size=32, length_buckets=4,
        ),
        data=DataConfig(schema="xp_sampled"),
    )
