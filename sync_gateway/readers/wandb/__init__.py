"""W&B's offline runs (docs/wandb.md): the ``.wandb`` framing, the record decoding, system keys, discovery."""
