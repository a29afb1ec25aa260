"""Lightning with hpc's HpcLogger: a tiny regression model, 2 epochs (tests/compat)."""
import sys

import lightning as L
from tiny_lightning import Tiny, tiny_loader  # beside this script

from hpc.integrations.lightning import HpcLogger

loader = tiny_loader()
logger = HpcLogger(project="lit", name="tiny", group="g1", config={"dataset": "synthetic"}, log_model=True,
                   save_dir=sys.argv[1])
trainer = L.Trainer(max_epochs=2, logger=logger, log_every_n_steps=1, accelerator="cpu", devices=1,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=sys.argv[1])
trainer.fit(Tiny(), loader, loader)
print("TRAINED", logger.version, flush=True)
