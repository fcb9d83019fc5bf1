"""A tiny model that trains in seconds on a CPU (tests, smoke runs)."""

from stellarfm_jax.config import Config, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="tiny",
        model=ModelConfig(
            embedding_dim=16, encoder_heads=4, encoder_dense=32, decoder_heads=4, decoder_dense=64,
            dropout=0.0, context_length=16,
        ),
        train=TrainConfig(
            batch_size=64, epochs=3, learning_rate=3e-3, sgdr_period_epochs=512, max_padding=8,
            checkpoint_every_epochs=1, eval_every_epochs=1, val_max_stars=256,
        ),
    )
