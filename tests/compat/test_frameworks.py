"""Real frameworks on tiny CPU models: HF Trainer through `python -m hpc.as_wandb`, Lightning's HpcLogger,
a torchrun group of 3 processes. Each runs in its own process (as a user would start it)."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from compat_support import SCRIPTS, environ, need_packages

pytestmark = pytest.mark.slow


def runs(root):
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", "*", "run.json")))


def load(run_dir, name):
    with open(os.path.join(run_dir, name), encoding="utf-8") as f:
        return json.load(f)


def history(run_dir):
    with open(os.path.join(run_dir, "history.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["values"] for line in f]


def start(args, root, tmp_path, **env):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=str(tmp_path),
                         env=environ(root, **env), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_hf_trainer_report_to_wandb_through_python_m_hpc_as_wandb(tmp_path):
    need_packages("torch", "transformers", "accelerate", "wandb")  # the real wandb is installed too
    root = str(tmp_path / "runs")
    start(["-m", "hpc.as_wandb", os.path.join(SCRIPTS, "hf_trainer.py"), str(tmp_path / "out")], root, tmp_path,
          WANDB_PROJECT="hf", WANDB_LOG_MODEL="end", WANDB_WATCH="all")
    [run_dir] = runs(root)
    meta, config, rows = load(run_dir, "run.json"), load(run_dir, "config.json"), history(run_dir)
    assert meta["project"] == "hf" and meta["name"] == "tiny-bert"
    assert meta["metrics"][:2] == [
        {"name": "train/global_step", "step_metric": None, "summary": None},
        {"name": "*", "step_metric": "train/global_step", "summary": None, "step_sync": True}]
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 4 and all({"train/learning_rate", "train/epoch", "train/global_step"} <= set(r)
                                   for r in train)
    assert [r["train/global_step"] for r in train] == [2, 4, 6, 8]
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["train/epoch"] for r in evals] == [1.0, 2.0] and "eval/runtime" in evals[0]
    # TrainingArguments and the model's config, as W&B gets them
    assert config["learning_rate"] == 0.001 and config["per_device_train_batch_size"] == 4
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 2 and config["model/num_parameters"] > 0
    assert load(run_dir, "summary.json")["values"]["train_loss"] > 0  # transformers sets it by hand
    final = glob.glob(os.path.join(run_dir, "files", "artifacts", "model-tiny-bert", "v*", "model.safetensors"))
    assert final, "WANDB_LOG_MODEL=end records the model as an artifact"
    assert load(run_dir, "exit.json")["reason"] == "finished"


def test_lightning_hpc_logger_two_epochs(tmp_path):
    need_packages("torch", "lightning")
    root = str(tmp_path / "runs")
    out = start([os.path.join(SCRIPTS, "lightning_train.py"), str(tmp_path / "out")], root, tmp_path)
    [run_dir] = runs(root)
    assert out.stdout.split()[-1] == os.path.basename(run_dir)
    meta, rows = load(run_dir, "run.json"), history(run_dir)
    assert (meta["project"], meta["name"], meta["group"]) == ("lit", "tiny", "g1")
    assert load(run_dir, "config.json") == {"dataset": "synthetic", "lr": 0.05, "hidden": 8}
    steps = [r["trainer/global_step"] for r in rows]
    assert steps == list(range(8))  # 4 batches x 2 epochs, logged at the trainer's global step
    with open(os.path.join(run_dir, "history.jsonl"), encoding="utf-8") as f:
        assert [json.loads(line)["step"] for line in f] == steps
    assert sum("val_loss" in r for r in rows) == 2 and {r["epoch"] for r in rows} == {0, 1}
    assert glob.glob(os.path.join(run_dir, "files", "artifacts", f"model-{meta['id']}", "v0", "*.ckpt"))


def test_torchrun_three_workers_form_one_group(tmp_path):
    need_packages("torch")
    script = tmp_path / "worker.py"
    script.write_text("import os, hpc\n"
                      "run = hpc.init(project='ddp')\n"
                      "hpc.log({'rank': int(os.environ['RANK'])})\n"
                      "hpc.finish()\n")
    root = str(tmp_path / "runs")
    start(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", str(script)], root, tmp_path)
    metas = [load(d, "run.json") for d in runs(root)]
    assert sorted(m["name"] for m in metas) == ["rank-0", "rank-1", "rank-2"]
    assert len({m["group"] for m in metas}) == 1 and metas[0]["group"].startswith("torchrun-")
    assert {m["launcher"]["world_size"] for m in metas} == {3} and metas[0]["launcher"]["kind"] == "torchrun"
