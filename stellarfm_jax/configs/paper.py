"""The paper's exact settings (Leung & Bovy 2023; original_spec §5.1), bf16 compute for a GPU."""

from stellarfm_jax.config import Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="paper",
        model=ModelConfig(
            embedding_dim=128, encoder_heads=16, encoder_dense=1024, decoder_heads=16, decoder_dense=3096,
            dropout=0.1, context_length=64, compute_dtype="bfloat16",
        ),
        train=TrainConfig(
            batch_size=1024, epochs=4096, learning_rate=1e-4, min_learning_rate=1e-10, sgdr_period_epochs=512,
            weight_decay=0.01, max_padding=60, outputs_per_star=1, checkpoint_every_epochs=128,
            eval_every_epochs=16,
        ),
        data=DataConfig(schema="paper"),
    )
