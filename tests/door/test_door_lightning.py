"""Lightning 2.6's own MLFlowLogger, unchanged, against hpc:// (tracking_uri= as its users pass it)."""
from __future__ import annotations

import os

import pytest
from door_support import import_mlflow, run_dirs

mlflow = import_mlflow()
pytestmark = pytest.mark.slow


def test_lightning_mlflowlogger_trains_into_hpc(door, tmp_path):
    L = pytest.importorskip("lightning") if os.environ.get("CI", "").lower() != "true" else __import__("lightning")
    import torch
    from lightning.pytorch.loggers import MLFlowLogger

    class Tiny(L.LightningModule):
        def __init__(self, lr=0.05, hidden=8):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    logger = MLFlowLogger(experiment_name="lit/tiny", run_name="tiny", tracking_uri=door.uri, log_model=True)
    trainer = L.Trainer(max_epochs=2, logger=logger, log_every_n_steps=1, accelerator="cpu", devices=1,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(Tiny(), loader, loader)

    client = mlflow.MlflowClient(door.uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert client.get_experiment(run.info.experiment_id).name == "lit/tiny"
    assert run.data.params == {"lr": "0.05", "hidden": "8"}
    history = client.get_metric_history(logger.run_id, "train_loss")
    assert [m.step for m in history] == list(range(8))
    assert len(client.get_metric_history(logger.run_id, "val_loss")) == 2
    (checkpoint,) = [p for p in _all(client, logger.run_id) if p.endswith(".ckpt")]
    on_disk = trainer.checkpoint_callback.best_model_path
    assert os.path.basename(checkpoint) == os.path.basename(on_disk)
    (run_dir,) = run_dirs(door.root)
    with open(os.path.join(run_dir, "artifacts", checkpoint), "rb") as a, open(on_disk, "rb") as b:
        assert a.read() == b.read()


def _all(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _all(client, run_id, f.path) if f.is_dir else [f.path]
    return out
