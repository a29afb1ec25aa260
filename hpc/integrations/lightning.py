"""``HpcLogger``: a Lightning logger that records an hpc run, with WandbLogger's main arguments.

    from hpc.integrations.lightning import HpcLogger
    trainer = lightning.Trainer(logger=HpcLogger(project="mnist", group="sweep-3", config={...}))

Metrics are logged at the trainer's global step (the row's ``step``, and ``trainer/global_step`` in the row,
as WandbLogger does); hyperparameters (``save_hyperparameters()``, ``log_hyperparams``) go to the config.
``log_image``, ``log_table`` and ``log_text`` take WandbLogger's arguments and log ``hpc.Image``/``hpc.Table``.
``log_model=True`` records the best checkpoint at the end, ``"all"`` every checkpoint when it is saved, as
artifacts (``files/artifacts/model-<run id>/v<N>/``). Only rank 0 records, as with WandbLogger.
"""
from __future__ import annotations

import os
from argparse import Namespace
from typing import Any, Dict, List, Mapping, Optional, Union

from lightning.fabric.utilities.logger import _add_prefix, _convert_params, _sanitize_callable_params
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

import hpc

__all__ = ["HpcLogger"]


class HpcLogger(Logger):
    LOGGER_JOIN_CHAR = "/"

    def __init__(self, name: Optional[str] = None, save_dir: Optional[str] = None, version: Optional[str] = None,
                 offline: bool = False, dir: Optional[str] = None, id: Optional[str] = None,
                 anonymous: Optional[bool] = None, project: Optional[str] = None,
                 log_model: Union[bool, str] = False, experiment: Any = None, prefix: str = "",
                 checkpoint_name: Optional[str] = None, group: Optional[str] = None,
                 config: Optional[Mapping[str, Any]] = None, **init_kwargs: Any):
        super().__init__()
        run_id = version or id
        self._save_dir = save_dir or dir
        self._init_args: Dict[str, Any] = dict(project=project, name=name, dir=self._save_dir, id=run_id,
                                               group=group, config=dict(config or {}), **init_kwargs)
        if run_id is not None:
            self._init_args.setdefault("resume", "allow")
        self._log_model = log_model
        self._prefix = prefix
        self._checkpoint_name = checkpoint_name
        self._experiment = experiment
        self._logged: List[str] = []
        self._checkpoint_callback: Any = None

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._experiment = hpc.run if hpc.run is not None else hpc.init(**self._init_args)
        return self._experiment

    @property
    def name(self) -> Optional[str]:
        return self._experiment.project if self._experiment is not None else self._init_args.get("project")

    @property
    def version(self) -> Optional[str]:
        return self._experiment.id if self._experiment is not None else self._init_args.get("id")

    @property
    def save_dir(self) -> Optional[str]:
        return self._save_dir

    @rank_zero_only
    def log_hyperparams(self, params: Union[Dict[str, Any], Namespace]) -> None:
        params = _sanitize_callable_params(_convert_params(params))
        self.experiment.config.update(params, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        row: Dict[str, Any] = dict(_add_prefix(dict(metrics), self._prefix, self.LOGGER_JOIN_CHAR))
        if step is None:
            self.experiment.log(row)
        else:
            self.experiment.log({**row, "trainer/global_step": step}, step=step)

    # WandbLogger's media methods, with its signatures (Lightning 2.6), logged as hpc media
    @rank_zero_only
    def log_table(self, key: str, columns: Optional[List[str]] = None, data: Optional[List[List[Any]]] = None,
                  dataframe: Any = None, step: Optional[int] = None) -> None:
        """Log a table, from ``columns`` and ``data`` or from a pandas ``dataframe``."""
        self.log_metrics({key: hpc.Table(columns=columns, data=data, dataframe=dataframe)}, step)  # type: ignore[dict-item]

    @rank_zero_only
    def log_text(self, key: str, columns: Optional[List[str]] = None, data: Optional[List[List[str]]] = None,
                 dataframe: Any = None, step: Optional[int] = None) -> None:
        """Log text as a table (as WandbLogger does)."""
        self.log_table(key, columns, data, dataframe, step)

    @rank_zero_only
    def log_image(self, key: str, images: List[Any], step: Optional[int] = None, **kwargs: Any) -> None:
        """Log images (tensors, numpy arrays, PIL images or file paths); each keyword argument is a list with
        one value per image, passed to its ``hpc.Image`` (``caption``, ``masks``, ``boxes``...)."""
        if not isinstance(images, list):
            raise TypeError(f'Expected a list as "images", found {type(images)}')
        n = len(images)
        for name, values in kwargs.items():
            if len(values) != n:
                raise ValueError(f"Expected {n} items but only found {len(values)} for {name}")
        per_image = [{name: kwargs[name][i] for name in kwargs} for i in range(n)]
        self.log_metrics({key: [hpc.Image(image, **extra) for image, extra in zip(images, per_image)]},  # type: ignore[dict-item]
                         step)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self._checkpoint_callback = checkpoint_callback
        if self._log_model == "all":
            self._log_checkpoints(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status == "success" and self._log_model and self._checkpoint_callback is not None:
            self._log_checkpoints(self._checkpoint_callback)

    def _log_checkpoints(self, callback: Any) -> None:
        paths = [callback.best_model_path] if self._log_model is True else \
            [callback.last_model_path, callback.best_model_path, *getattr(callback, "best_k_models", {})]
        for path in dict.fromkeys(p for p in paths if p and os.path.isfile(p)):
            if path in self._logged:
                continue
            self._logged.append(path)
            name = self._checkpoint_name or f"model-{self.experiment.id}"
            aliases = ["best"] if path == callback.best_model_path else []
            self.experiment.log_artifact(path, name=name, type="model", aliases=aliases)
