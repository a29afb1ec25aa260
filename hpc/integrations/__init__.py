"""Framework integrations. Each module imports its framework; ``import hpc`` imports none of them.

- ``hpc.integrations.lightning.HpcLogger``: a Lightning logger (WandbLogger's main arguments).
- Hugging Face transformers needs no module here: ``report_to="wandb"`` under ``hpc.as_wandb()`` (or
  ``python -m hpc.as_wandb train.py``) records through transformers' own WandbCallback.
"""
