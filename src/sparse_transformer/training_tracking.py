"""MLflow through Lightning: the logger and the callback of a training run.

The rest of what the stages record (the store, the run's tags, description and
parameters, evaluation metrics, samples) is in `tracking`, which does not import
Lightning, so evaluation and sampling run without it.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any, Mapping

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from .config import ExperimentConfig
from .tracking import (TrackingError, artifact_location, describe_run, existing_run, experiment_name, log_config,
                       reason, tracking_uri, training_experiment)

if TYPE_CHECKING:
    from mlflow import MlflowClient


class TrainingLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with the project's steps, each (metric, step) logged once,
    finite values only, and a store that fails not stopping training.

    Lightning numbers a step from 0 (the step it has just taken, before counting it), so
    its step s is the (s + 1)-th optimizer step: logged as s + 1, as curve.csv and the
    checkpoints' global_step count it. `logged` holds, for a resumed run, the last step
    of each metric the store already has: the steps a resumed run replays (between its
    checkpoint and where the earlier run stopped, identical by construction) are skipped.
    """

    def __init__(self, *args: Any, logged: Mapping[str, int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.logged = dict(logged or {})
        self.failure: str | None = None  # the store's first failure: nothing is sent after it
        self.not_recorded: set[str] = set()

    def store_failed(self, err: BaseException, what: str) -> None:
        """Reports the store's first failure (one line) and stops sending to it."""
        if self.failure is None:
            self.failure = f"{what}: {reason(err)}"
            print(f"warning: the MLflow store {self._tracking_uri} failed ({self.failure}); training goes on "
                  "without it (curve.csv and the checkpoints keep the run)", file=sys.stderr)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = None if step is None else step + 1
        fresh = {key: value for key, value in metrics.items()  # (Lightning logs numbers only)
                 if math.isfinite(value) and (step is None or step > self.logged.get(key, 0))}
        if fresh and self.failure is None:
            try:
                super().log_metrics(fresh, step)
            except Exception as err:  # the store's errors are of many kinds
                self.store_failed(err, f"at step {step}")
        if self.failure is not None:
            self.not_recorded.update(fresh)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self.failure is None:
            try:
                super().finalize(status)
            except Exception as err:
                self.store_failed(err, "ending the run")

    @rank_zero_only
    def report_unrecorded(self) -> None:
        """One line saying which metrics the store did not record, if any."""
        if self.not_recorded:
            print(f"warning: MLflow did not record {', '.join(sorted(self.not_recorded))} after its store failed "
                  f"({self.failure})", file=sys.stderr)


def logged_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step of each metric a run holds."""
    return {key: max(m.step for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics}


def training_logger(cfg: ExperimentConfig, client: MlflowClient | None, run_id: str | None) -> TrainingLogger:
    """Lightning's logger, continuing run `run_id` when the store holds it, else starting one
    (on rank 0, now: a store that cannot be written stops training before it starts).
    On ranks other than 0 (client None) Lightning keeps the logger idle."""
    uri = tracking_uri(cfg.tracking)
    run_id = existing_run(client, run_id) if client else None
    logger = TrainingLogger(
        experiment_name=experiment_name(cfg), run_name=cfg.tracking.run_name, tracking_uri=uri,
        artifact_location=artifact_location(uri), run_id=run_id,
        logged=logged_steps(client, run_id) if run_id else None,
    )
    if client is not None:
        try:
            training_experiment(client, cfg)  # marked as model training; the logger finds it by name
            if run_id is None:
                _ = logger.run_id  # creates the experiment if needed, then the run
            else:
                client.update_run(run_id, status="RUNNING")  # resumed: running again
        except Exception as err:
            raise TrackingError(f"the MLflow tracking store {uri} cannot be written ({reason(err)}): make it "
                                "writable, point MLFLOW_TRACKING_URI (or tracking.tracking_uri) at another store, "
                                "or set tracking.enabled: false") from None
    return logger


class MLflowRun(Callback):
    """Fills the training run: the configuration as parameters, its tags and description
    when fitting starts, and MLflow's system metrics (CPU, GPU, memory, disk) while it runs - on rank 0 only.

    Lightning's MLFlowLogger records metrics but neither of these; system metrics need an
    active MLflow run, `mlflow.start_run(run_id=..., log_system_metrics=True)`.
    """

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    def on_fit_start(self, trainer, pl_module) -> None:
        import mlflow

        logger = trainer.logger
        if not trainer.is_global_zero:
            return
        try:
            log_config(logger.experiment, logger.run_id, self.cfg)
            describe_run(logger.experiment, logger.run_id, self.cfg, pl_module.model.num_params())
            if self.cfg.tracking.system_metrics:
                mlflow.set_tracking_uri(tracking_uri(self.cfg.tracking))
                mlflow.start_run(run_id=logger.run_id, log_system_metrics=True)
        except Exception as err:
            logger.store_failed(err, "logging the parameters")

    def _end(self, trainer, status: str) -> None:
        import mlflow

        try:
            if mlflow.active_run() is not None:
                mlflow.end_run(status)
        except Exception as err:
            trainer.logger.store_failed(err, "ending the run")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._end(trainer, "FINISHED")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._end(trainer, "FAILED")
