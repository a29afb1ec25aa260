"""A toy training loop that records a run with hpc: the shape of a real script, minus the model.

    python examples/train_toy.py --epochs 3 --project demo
"""
from __future__ import annotations

import argparse
import math
import random
import time

import hpc


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", default="demo")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    run = hpc.init(project=args.project, config=vars(args), tags=["toy"])
    run.define_metric("train/*", step_metric="batch")
    run.define_metric("val/*", step_metric="epoch")
    run.define_metric("val/loss", step_metric="epoch", summary="min")
    batch = 0
    for epoch in range(args.epochs):
        for _ in range(args.batches):
            loss = 2.0 * math.exp(-args.lr * batch / 10) + rng.gauss(0, 0.05)
            hpc.log({"train/loss": loss, "train/lr": args.lr, "batch": batch})
            batch += 1
            time.sleep(0.001)
        val = 2.0 * math.exp(-args.lr * batch / 10) + 0.1
        hpc.log({"val/loss": val, "val/acc": 1 - val / 2, "epoch": epoch})
        print(f"epoch {epoch}: val/loss {val:.4f}")
    run.summary["best_epoch"] = args.epochs - 1
    hpc.finish()


if __name__ == "__main__":
    main()
