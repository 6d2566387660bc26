"""Training with Lightning: the LightningModule, the Trainer built from the config, and
`train(cfg)` behind `sparse-transformer train` (commands/train.py).

Optimization (the paper's section 6, `TrainConfig`): AdamW, betas 0.9/0.999, weight decay 0.01
on the weight matrices of the linear layers only - biases, LayerNorm gains and the
embeddings are left undecayed, the usual choice since decaying them only shrinks
offsets and scales without regularizing anything; linear warmup then cosine decay to 0,
per optimizer step; gradient norm clipped to 1.0 (Lightning's gradient_clip_val);
gradient accumulation, precision (bf16-mixed on CUDA, 32-true elsewhere unless set),
devices, nodes and strategy (DDP, FSDP) all from the config, through Lightning. The loss
is bits per dim (cross-entropy in nats / ln 2).

Resuming: checkpoints every `checkpoint_every_steps` and last.ckpt; a run that finds
last.ckpt resumes from it with the optimizer, scheduler and loop state. The data order
is a function of (data seed, batch index) in the data package, and the dropout masks
here of (train seed, batch index, rank), so a killed and resumed run takes the same
steps as one that never stopped. A checkpoint of other model, optimization or data
settings is set aside instead, and one run at a time writes the folder (checkpoints.py);
a SIGTERM or SIGINT stops training with a checkpoint and a non-zero exit, a non-finite
loss before it is checkpointed (stopping.py).

Steps: step N is the N-th optimizer step, in curve.csv, in checkpoints (global_step N:
N steps done) and in MLflow alike.

Several GPUs of one machine (train.devices, train.strategy): Lightning starts one process
per device, running this same command again for each. Several nodes: torchrun or SLURM
starts the command on each node, as Lightning documents.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from . import acceleration, checkpoints, outputs, tracking, training_tracking
from .checkpoints import LAST_CHECKPOINT, read_checkpoint
from .config import ConfigError, DataConfig, ExperimentConfig, ModelConfig, TrainConfig, from_dict
from .data.datamodule import data_module_from_config
from .errors import Stopped, memory_errors_explained
from .model import ResidualBlock, SparseTransformer
from .stopping import FiniteLoss, StopOnSignal


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor at optimizer step `step` (0-based): linear warmup, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay for the weight matrices of linear layers; none for biases, norms, embeddings."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decayed"},
        {"params": no_decay, "weight_decay": 0.0, "name": "not_decayed"},
    ]


class SparseTransformerModule(L.LightningModule):
    """The model under Lightning: bits per dim as the loss, AdamW with warmup and cosine decay.

    Built from plain dicts (the model and train sections) so that a checkpoint holds
    everything needed to rebuild it.
    """

    def __init__(self, model: dict, train: dict, data: dict | None = None):
        super().__init__()
        # Parameters go to MLflow from the whole config (training_tracking.MLflowRun), not from here.
        # `data` (data_settings) tells a resumed run whether the checkpoint read the same data.
        self.save_hyperparameters(logger=False)
        self.train_config: TrainConfig = from_dict(TrainConfig, train, "train")
        model_config = from_dict(ModelConfig, model, "model")
        self.model = acceleration.for_training(SparseTransformer(model_config), model_config.recompute,
                                               self.train_config.compile_mode if self.train_config.compile else None)
        self.mlflow_run_id: str | None = None

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(*self.model.inputs_and_targets(batch))  # batch (B, L) uint8
        self.log("train/bpd", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        # Every example has the same number of targets, so the batch-size-weighted mean
        # Lightning takes over batches is the mean over all bytes.
        loss = self.model.loss(*self.model.inputs_and_targets(batch))
        self.log("valid/bpd", loss, prog_bar=True, sync_dist=True, batch_size=batch.shape[0])

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout masks as a function of (seed, batch index, rank), like the data order:
        # a resumed run repeats them without any saved random state.
        index = self.trainer.fit_loop.total_batch_idx
        seed = np.random.SeedSequence([self.train_config.seed, index, self.global_rank]).generate_state(1)[0]
        torch.manual_seed(int(seed))

    def configure_optimizers(self) -> dict:
        cfg = self.train_config
        optimizer = torch.optim.AdamW(
            parameter_groups(self.model, cfg.weight_decay), lr=cfg.learning_rate, betas=cfg.betas
        )
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "lr"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A resumed run, evaluate and sample log into the same MLflow run.
        checkpoint["mlflow_run_id"] = self.mlflow_run_id


class SpeedAndMemory(Callback):
    """Tokens per second over all devices (progress bar and logger) and, on CUDA, the
    peak GPU memory. Lightning's ThroughputMonitor reports to the logger only, not the bar.

    Measured between the ends of consecutive training batches (data loading included);
    intervals that contain validation or an epoch boundary are skipped.
    """

    def __init__(self) -> None:
        self._last: float | None = None

    def _restart(self, *_: Any) -> None:
        self._last = None

    on_train_epoch_start = on_validation_end = _restart

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: SparseTransformerModule, outputs: Any,
                           batch: torch.Tensor, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            pl_module.log("gpu_memory_gib", torch.cuda.max_memory_allocated(pl_module.device) / 2**30)
        now = time.perf_counter()
        if self._last is not None:
            tokens = pl_module.model.inputs_and_targets(batch)[1].numel() * trainer.world_size
            pl_module.log("tokens_per_s", tokens / (now - self._last), prog_bar=True)
        self._last = now


class FinalCheckpoint(Callback):
    """Saves last.ckpt when training ends: Lightning's ModelCheckpoint rewrites last.ckpt
    only when it saves at an interval, so the final steps would otherwise be lost."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # every rank calls it; the strategy decides who writes


class TrainingCurve(Callback):
    """Bits per dim per step as CSV (rank 0): step, train_bpd, valid_bpd - one row every
    log_every_steps, valid_bpd filled on the rows of validation steps. Written with every
    checkpoint (the last one at the end included) and after each validation, so the file
    holds every row up to the checkpoint a run resumes from; the resumed run keeps those
    rows, drops any past them, and continues the file. A damaged file loses its damaged
    rows, with a warning, not the run."""

    FIELDS = ("step", "train_bpd", "valid_bpd")

    def __init__(self, path: str | Path, every: int):
        self.path, self.every = Path(path), every
        self.rows: dict[int, dict[str, float]] = {}
        self._last_step = 0

    def _write(self) -> None:
        with outputs.replacing(self.path) as temporary, temporary.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.FIELDS)
            writer.writeheader()
            for step in sorted(self.rows):
                writer.writerow({"step": step, **self.rows[step]})

    def _read(self, until_step: int) -> dict[int, dict[str, float]]:
        """The rows of an existing file up to `until_step`; damaged rows are skipped."""
        rows, damaged = {}, 0
        try:
            with self.path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    try:
                        step = int(row["step"])
                        values = {key: float(row[key]) for key in self.FIELDS[1:] if row.get(key)}
                    except (KeyError, TypeError, ValueError):
                        damaged += 1
                        continue
                    if step <= until_step:
                        rows[step] = values
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            print(f"warning: {self.path} cannot be read ({err}): the curve restarts from this run's rows", file=sys.stderr)
            return {}
        if damaged:
            print(f"warning: {self.path}: skipped {damaged} damaged row(s); the others are kept", file=sys.stderr)
        return rows

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_fit_start: Lightning restores global_step from the checkpoint after that hook.
        self._last_step = trainer.global_step
        if trainer.is_global_zero and self.path.is_file():
            self.rows = self._read(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        # Only on the batch that completed an optimizer step (with gradient accumulation,
        # the other batches end with global_step unchanged).
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        value = trainer.callback_metrics.get("train/bpd")
        if trainer.is_global_zero and stepped and value is not None and trainer.global_step % self.every == 0:
            self.rows.setdefault(trainer.global_step, {})["train_bpd"] = float(value)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("valid/bpd")
        if trainer.is_global_zero and value is not None and not trainer.sanity_checking:
            self.rows.setdefault(trainer.global_step, {})["valid_bpd"] = float(value)
            self._write()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.is_global_zero:
            self._write()


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting optimizer steps of max_steps when training is bounded
    by steps alone: Lightning's own bars count the batches of each epoch and show
    "Epoch 1/-2" then (the epochs are not bounded). Bounded by epochs, it is Lightning's bar."""

    @staticmethod
    def _by_steps(trainer: L.Trainer) -> bool:
        return trainer.max_epochs == -1 and trainer.max_steps > 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._by_steps(trainer):
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = trainer.global_step  # a resumed run starts where it stopped
            bar.unit = "step"
            bar.set_description("Training")

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._by_steps(trainer):
            super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not self._by_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, step = self.train_progress_bar, trainer.global_step
        if self.is_enabled and step != bar.n and (step % self.refresh_rate == 0 or step == bar.total):
            bar.update(step - bar.n)
            bar.set_postfix(self.get_metrics(trainer, pl_module))


def default_precision(cfg: TrainConfig) -> str:
    on_gpu = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    return cfg.precision or ("bf16-mixed" if on_gpu else "32-true")


def strategy(cfg: TrainConfig) -> Any:
    if cfg.strategy == "fsdp":
        from lightning.pytorch.plugins.precision import FSDPPrecision
        from lightning.pytorch.strategies import FSDPStrategy

        class NormClippingFSDPPrecision(FSDPPrecision):
            # Lightning's FSDPPrecision refuses clipping by norm (Lightning issue 19235): the
            # norm of sharded gradients needs the root FSDP module, which it does not hold.
            def clip_grad_by_norm(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
                fsdp.model.clip_grad_norm_(clip_val)

        # One FSDP unit per residual block: parameters are gathered block by block.
        # state_dict_type "full": checkpoints are one file gathered on rank 0, which
        # model_from_checkpoint (evaluate, sample) reads without FSDP; "sharded" writes a folder.
        fsdp = FSDPStrategy(auto_wrap_policy={ResidualBlock}, state_dict_type="full",
                            precision_plugin=NormClippingFSDPPrecision(default_precision(cfg)))
        return fsdp
    return cfg.strategy


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing through `outputs.replacing`: under a
    temporary name in the checkpoint folder itself, renamed over the target when complete.
    (Lightning's own writer stages the file in the system's temporary folder and moves
    it, which is a copy, not a rename, when that folder is on another file system.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with outputs.replacing(path) as temporary:
            torch.save(checkpoint, temporary)


def build_trainer(cfg: TrainConfig, logger: Any = False, callbacks: list[Callback] = ()) -> L.Trainer:
    """The Trainer of a training config, with checkpointing, stopping (signals, non-finite
    losses), learning-rate and speed logging."""
    last = Path(cfg.checkpoint_dir) / LAST_CHECKPOINT
    checkpoints_every = ModelCheckpoint(
        dirpath=cfg.checkpoint_dir, filename="{step}", every_n_train_steps=cfg.checkpoint_every_steps,
        save_last=True, save_top_k=1, monitor="step", mode="max",  # keep the newest interval checkpoint
    )
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    validate = cfg.val_every_steps is not None
    try:
        return L.Trainer(
            accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy(cfg),
            precision=default_precision(cfg), plugins=[AtomicCheckpointIO()],
            max_steps=cfg.max_steps or -1, max_epochs=cfg.max_epochs if cfg.max_epochs is not None else -1,
            gradient_clip_val=cfg.gradient_clip, accumulate_grad_batches=cfg.accumulate_grad_batches,
            # val_check_interval counts batches, not optimizer steps.
            val_check_interval=(cfg.val_every_steps or 1) * cfg.accumulate_grad_batches, check_val_every_n_epoch=None,
            limit_val_batches=(cfg.val_batches or 1.0) if validate else 0,
            log_every_n_steps=cfg.log_every_steps,
            callbacks=[
                checkpoints_every, FinalCheckpoint(last), StopOnSignal(last), SpeedAndMemory(), StepProgressBar(),
                FiniteLoss(cfg.log_every_steps, last),  # before the curve: no non-finite row is recorded
                *([TrainingCurve(cfg.curve_file, cfg.log_every_steps)] if cfg.curve_file else []),
                *([LearningRateMonitor("step")] if logger else []), *callbacks,
            ],
            logger=logger,
        )
    except MisconfigurationException as err:
        raise ConfigError(f"train (accelerator, devices, strategy): {' '.join(str(err).split())}") from None


def already_complete(cfg: TrainConfig, checkpoint: dict, last: Path) -> str | None:
    """What to tell the user when the checkpoint to resume has already reached the end of
    training (resuming would stop at once), else None."""
    step, epoch = checkpoint["global_step"], checkpoint["epoch"]  # epoch: the epochs completed
    if cfg.max_steps is not None and step >= cfg.max_steps:
        reached = f"step {step:,}, and train.max_steps is {cfg.max_steps:,}"
    elif cfg.max_epochs is not None and epoch >= cfg.max_epochs:
        reached = f"epoch {epoch:,}, and train.max_epochs is {cfg.max_epochs:,}"
    else:
        return None
    return (f"the run is already complete: {last} is at {reached}. Nothing to train. To train longer, raise "
            f"that limit; to start afresh, delete {cfg.checkpoint_dir} or add --set train.resume=false "
            "(which overwrites its checkpoints).")


def data_settings(cfg: DataConfig, attributes: dict) -> dict:
    """What a run's batches are drawn from: the prepared file's recipe and the settings that
    draw them. Checkpoints keep it, to tell whether a resumed run reads the same data."""
    return {"dataset": attributes["dataset"], "parameters": attributes["parameters"],
            "sources": attributes["source_sha256"], "batch_size": cfg.batch_size, "context": cfg.context,
            "seed": cfg.seed}


def checkpoint_to_resume(cfg: ExperimentConfig, data: dict, rank_zero: bool) -> dict | None:
    """The contents of last.ckpt when this run continues it (train.resume, and the same
    model, optimization and data settings). A checkpoint of other settings is set aside:
    rank 0 renames the folder (and moves the curve into it), and training starts afresh."""
    folder = Path(cfg.train.checkpoint_dir)
    last = folder / LAST_CHECKPOINT
    if not (cfg.train.resume and last.is_file()):
        return None
    advice = (f"rename {folder} to train afresh, or copy a good step=N.ckpt over it to resume from there "
              "(train.resume: false ignores it)")
    checkpoint = read_checkpoint(last, advice)
    current = {"model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train), "data": data}
    changes = checkpoints.changed_settings(checkpoint.get("hyper_parameters", {}), current)
    if changes:
        if rank_zero:
            aside = checkpoints.set_aside(folder, *([Path(cfg.train.curve_file)] if cfg.train.curve_file else []))
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            print(f"{last} was trained with other settings ({'; '.join(changes[:3])}{more}): set aside as {aside} "
                  "(kept, not deleted); training starts afresh", file=sys.stderr)
        return None
    checkpoints.check_finite_weights(checkpoint, last, advice)
    return checkpoint


def train(cfg: ExperimentConfig) -> Path:
    """Train (or resume) the experiment; returns the path of its last checkpoint. Raises
    `Stopped` when a signal ended training before its last step."""
    folder = outputs.check_folder(cfg.train.checkpoint_dir, "train.checkpoint_dir")
    if cfg.train.curve_file:
        outputs.check_file(cfg.train.curve_file, "train.curve_file")
    rank_zero = rank_zero_only.rank == 0  # Lightning starts this command once per rank: rank 0 holds the lock
    with checkpoints.checkpoint_lock(folder) if rank_zero else contextlib.nullcontext():
        return _train(cfg, folder / LAST_CHECKPOINT, rank_zero)


def _train(cfg: ExperimentConfig, last: Path, rank_zero: bool) -> Path:
    # Only rank 0 talks to the store (the other ranks' loggers stay idle), before any work.
    client = tracking.connect(cfg.tracking) if cfg.tracking.enabled and rank_zero else None
    datamodule = data_module_from_config(cfg.data, cfg.model.context)
    checkpoints.check_data_fits_model(datamodule.attributes, cfg.model, cfg.data.hdf5)
    data = data_settings(cfg.data, datamodule.attributes)
    resumed = checkpoint_to_resume(cfg, data, rank_zero)
    complete = already_complete(cfg.train, resumed, last) if resumed is not None else None
    if complete is not None:
        print(complete)
        if rank_zero:
            checkpoints.mark_finished(last.parent, {"step": resumed["global_step"], "checkpoint": str(last),
                                                    "mlflow_run_id": resumed.get("mlflow_run_id")})
        return last
    if rank_zero:
        checkpoints.clear_finished(last.parent)

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)  # the initialization
    module = SparseTransformerModule(dataclasses.asdict(cfg.model), dataclasses.asdict(cfg.train), data)
    logger, callbacks = False, []
    if cfg.tracking.enabled:
        logger = training_tracking.training_logger(cfg, client, resumed.get("mlflow_run_id") if resumed and client else None)
        module.mlflow_run_id = logger.run_id  # None on ranks other than 0, which save no checkpoints
        callbacks.append(training_tracking.MLflowRun(cfg))
    trainer = build_trainer(cfg.train, logger, callbacks)
    stop = next(callback for callback in trainer.callbacks if isinstance(callback, StopOnSignal))
    if resumed is not None:
        print(f"resuming from {last} (step {resumed['global_step']})")
    try:
        with memory_errors_explained("a training step", "lower data.batch_size or the context (data.context, "
                                                        "model.context), or set model.recompute: true"):
            trainer.fit(module, datamodule=datamodule, ckpt_path=last if resumed else None, weights_only=True)
    except SystemExit:
        if stop.signal is None:
            raise
    finally:
        if logger:
            logger.report_unrecorded()
    if stop.signal is not None:
        name = signal.Signals(stop.signal).name
        if stop.saved_step is None:
            raise Stopped(f"stopped at once by a second {name}: what was trained since the last checkpoint in "
                          f"{last.parent} is lost; run the same command to resume from it", stop.signal)
        of = f" of {cfg.train.max_steps}" if cfg.train.max_steps else ""
        raise Stopped(f"stopped by {name} at step {stop.saved_step}{of}: saved {last}; run the same command "
                      "(or the workflow's stage) again to resume from it", stop.signal)
    if rank_zero:
        checkpoints.mark_finished(last.parent, {"step": trainer.global_step, "checkpoint": str(last),
                                                "mlflow_run_id": module.mlflow_run_id})
    return last
