"""A wider model for a lent GPU (``scripts/gpu_session.sh``): the paper's width (D=128, 16 heads) with half
of its dense widths, trained with the small config's recipe (4 requests per star, labels requested 4x as
often, one cosine cycle over the run).

~1.9M parameters (7.6 MB in float32, still small enough to ship inside the package), bfloat16 compute.
On this project's 2-core CPU it would take ~4x the small config's time per epoch; on one GPU an epoch of
the ~32k-star training split is a fraction of a second, so the session script sets ``train.epochs`` (and the
cosine period) from the speed it measures. Dropout 0.1 as in the paper: at this width and that many epochs
the model can over-fit 32k stars.
"""

import dataclasses

from stellarfm_jax.config import ModelConfig, load_config

EPOCHS = 300


def get_config():
    small = load_config("small")  # the recipe: requests per star, label weights, padding, best-checkpoint metric
    return dataclasses.replace(
        small,
        name="medium",
        model=ModelConfig(
            embedding_dim=128, encoder_heads=16, encoder_dense=512, decoder_heads=16, decoder_dense=1024,
            dropout=0.1, context_length=64, compute_dtype="bfloat16",
        ),
        train=dataclasses.replace(
            small.train, batch_size=512, epochs=EPOCHS, sgdr_period_epochs=EPOCHS, learning_rate=5e-4,
            eval_every_epochs=10, checkpoint_every_epochs=10, keep_checkpoints=1,
        ),
    )
