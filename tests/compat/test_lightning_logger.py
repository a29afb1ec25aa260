"""HpcLogger against the real Lightning: WandbLogger's media methods (log_image, log_table, log_text) with
WandbLogger's signatures, so code moved from WandbLogger to HpcLogger keeps working (issue 24, item 3)."""
from __future__ import annotations

import inspect
import json
import os

import pytest
from compat_support import need_packages

import hpc


def media_lines(run_dir):
    with open(os.path.join(run_dir, "media.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow  # imports Lightning (about 9 s here)
@pytest.mark.parametrize("method", ["log_image", "log_table", "log_text"])
def test_the_media_methods_take_wandb_loggers_arguments(method):
    need_packages("lightning")
    from lightning.pytorch.loggers import WandbLogger

    from hpc.integrations.lightning import HpcLogger

    ours, theirs = inspect.signature(getattr(HpcLogger, method)), inspect.signature(getattr(WandbLogger, method))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
        [(p.name, p.kind, p.default) for p in theirs.parameters.values()]


@pytest.mark.slow  # the fast tier's first Lightning import (about 4 s here)
def test_log_image_table_and_text_record_hpc_media(tmp_path):
    need_packages("lightning", "numpy")
    import numpy as np

    from hpc.integrations.lightning import HpcLogger

    logger = HpcLogger(project="lit", name="media", save_dir=str(tmp_path), settings={"console": False})
    logger.log_image("samples", [np.zeros((2, 3), dtype=np.uint8), np.full((4, 4, 3), 9, dtype=np.uint8)],
                     step=3, caption=["first", "second"])
    logger.log_table("preds", columns=["x", "y"], data=[[1, 2.5], [2, 3.5]], step=3)
    logger.log_text("samples/text", columns=["prompt", "output"], data=[["hi", "there"]])  # W&B: still step 3
    with pytest.raises(TypeError, match="Expected a list"):
        logger.log_image("one", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="Expected 1 items but only found 2 for caption"):
        logger.log_image("one", [np.zeros((2, 2), dtype=np.uint8)], caption=["a", "b"])
    run_dir = logger.experiment.dir
    hpc.finish()
    lines = media_lines(run_dir)
    assert [(r["step"], r["values"]["key"], r["values"]["kind"]) for r in lines] == [
        (3, "samples", "image"), (3, "samples", "image"), (3, "preds", "table"), (3, "samples/text", "table")]
    assert [r["values"].get("caption") for r in lines[:2]] == ["first", "second"]
    assert (lines[0]["values"]["width"], lines[1]["values"]["height"]) == (3, 4)
    assert (lines[2]["values"]["rows"], lines[2]["values"]["columns"]) == (2, 2)


@pytest.mark.slow
def test_a_lightning_module_logs_media_through_the_trainer(tmp_path):
    need_packages("torch", "lightning")
    import lightning as L
    import torch

    from hpc.integrations.lightning import HpcLogger

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def on_train_epoch_end(self):  # what WandbLogger users write: self.logger.log_<media>(...)
            step = self.global_step
            self.logger.log_image("weights", [self.net.weight.detach().reshape(1, 1, 2)], step=step)
            self.logger.log_table("epoch", columns=["epoch", "step"], data=[[self.current_epoch, step]], step=step)
            self.logger.log_text("note", columns=["text"], data=[[f"epoch {self.current_epoch}"]], step=step)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    logger = HpcLogger(project="lit", name="media-fit", save_dir=str(tmp_path), settings={"console": False})
    trainer = L.Trainer(max_epochs=2, logger=logger, accelerator="cpu", devices=1, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(Tiny(), loader)
    run_dir = logger.experiment.dir
    hpc.finish()
    lines = media_lines(run_dir)
    assert [(r["step"], r["values"]["key"]) for r in lines] == [
        (2, "weights"), (2, "epoch"), (2, "note"), (4, "weights"), (4, "epoch"), (4, "note")]
    assert [r["values"]["kind"] for r in lines[:3]] == ["image", "table", "table"]
