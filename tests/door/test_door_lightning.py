"""Lightning 2.6's own MLFlowLogger, unchanged, against hpc:// (tracking_uri= as its users pass it)."""
from __future__ import annotations

import os
import sys

import pytest
from door_support import import_mlflow, run_dirs

mlflow = import_mlflow()
# the tiny model the compat tests train too
SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compat", "scripts")
pytestmark = pytest.mark.slow


def test_lightning_mlflowlogger_trains_into_hpc(door, tmp_path):
    L = pytest.importorskip("lightning") if os.environ.get("CI", "").lower() != "true" else __import__("lightning")
    from lightning.pytorch.loggers import MLFlowLogger

    sys.path.insert(0, SCRIPTS)
    from tiny_lightning import Tiny, tiny_loader

    loader = tiny_loader()
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
