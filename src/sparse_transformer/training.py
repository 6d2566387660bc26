"""Training with Lightning: the LightningModule, the Trainer built from the config, and
`train(cfg)` behind `sparse-transformer train` (commands/train.py).

Optimization (SPEC section 2, `TrainConfig`): AdamW, betas 0.9/0.999, weight decay 0.01
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
steps as one that never stopped.

Several GPUs of one machine (train.devices, train.strategy): Lightning starts one process
per device, running this same command again for each. Several nodes: torchrun or SLURM
starts the command on each node, as Lightning documents.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from . import tracking
from .config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig, from_dict
from .data.datamodule import ImageDataModule, data_module_from_config
from .errors import UserError
from .model import ResidualBlock, SparseTransformer

LAST_CHECKPOINT = "last.ckpt"


class CheckpointError(UserError):
    """A checkpoint is missing or unreadable."""


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

    def __init__(self, model: dict, train: dict):
        super().__init__()
        # Parameters go to MLflow from the whole config (tracking.MLflowRun), not from here.
        self.save_hyperparameters(logger=False)
        self.train_config: TrainConfig = from_dict(TrainConfig, train, "train")
        self.model = SparseTransformer(from_dict(ModelConfig, model, "model"))
        if self.train_config.compile:
            self.model.compile_blocks(mode=self.train_config.compile_mode)
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
    log_every_steps, valid_bpd filled on the rows of validation steps. A resumed run
    keeps the rows before its checkpoint's step and continues the file."""

    FIELDS = ("step", "train_bpd", "valid_bpd")

    def __init__(self, path: str | Path, every: int):
        self.path, self.every = Path(path), every
        self.rows: dict[int, dict[str, float]] = {}
        self._last_step = 0

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.FIELDS)
            writer.writeheader()
            for step in sorted(self.rows):
                writer.writerow({"step": step, **self.rows[step]})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_fit_start: Lightning restores global_step from the checkpoint after that hook.
        self._last_step = trainer.global_step
        if trainer.is_global_zero and self.path.is_file():
            with self.path.open(newline="") as fh:
                kept = [row for row in csv.DictReader(fh) if int(row["step"]) <= trainer.global_step]
            self.rows = {int(r["step"]): {k: r[k] for k in self.FIELDS[1:] if r.get(k)} for r in kept}

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

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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


def build_trainer(cfg: TrainConfig, logger: Any = False, callbacks: list[Callback] = ()) -> L.Trainer:
    """The Trainer of a training config, with checkpointing, learning-rate and speed logging."""
    checkpoints = ModelCheckpoint(
        dirpath=cfg.checkpoint_dir, filename="{step}", every_n_train_steps=cfg.checkpoint_every_steps,
        save_last=True, save_top_k=1, monitor="step", mode="max",  # keep the newest interval checkpoint
    )
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    validate = cfg.val_every_steps is not None
    return L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy(cfg),
        precision=default_precision(cfg),
        max_steps=cfg.max_steps or -1, max_epochs=cfg.max_epochs if cfg.max_epochs is not None else -1,
        gradient_clip_val=cfg.gradient_clip, accumulate_grad_batches=cfg.accumulate_grad_batches,
        # val_check_interval counts batches, not optimizer steps.
        val_check_interval=(cfg.val_every_steps or 1) * cfg.accumulate_grad_batches, check_val_every_n_epoch=None,
        limit_val_batches=(cfg.val_batches or 1.0) if validate else 0,
        log_every_n_steps=cfg.log_every_steps,
        callbacks=[
            checkpoints, FinalCheckpoint(Path(cfg.checkpoint_dir) / LAST_CHECKPOINT), SpeedAndMemory(), StepProgressBar(),
            *([TrainingCurve(cfg.curve_file, cfg.log_every_steps)] if cfg.curve_file else []),
            *([LearningRateMonitor("step")] if logger else []), *callbacks,
        ],
        logger=logger,
    )


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: train first (`sparse-transformer train`) or set its path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: read what is used
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err}): train again or choose another") from None


def model_from_checkpoint(path: str | Path, attention: str | None = None) -> tuple[SparseTransformer, dict]:
    """The trained model (eval mode) and the checkpoint it came from. `attention` replaces the
    stored backend: the backend belongs to the machine, not to the weights."""
    checkpoint = read_checkpoint(path)
    model_section = dict(checkpoint["hyper_parameters"]["model"])
    if attention is not None:
        model_section["attention"] = attention
    model = SparseTransformer(from_dict(ModelConfig, model_section, "checkpoint.model"))
    prefix = "model."
    model.load_state_dict({k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    return model.eval(), checkpoint


def finished_run(cfg: TrainConfig) -> str | None:
    """What to tell the user when the last checkpoint has already reached the end of
    training (resuming would stop at once), else None."""
    last = Path(cfg.checkpoint_dir) / LAST_CHECKPOINT
    if not (cfg.resume and last.is_file()):
        return None
    checkpoint = read_checkpoint(last)
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


def check_data_fits_model(datamodule: Any, model_cfg: ModelConfig, data_path: str) -> None:
    """Images need a model with their image_shape (row/column/channel embeddings, start
    symbol); streams a model without one."""
    if isinstance(datamodule, ImageDataModule):
        if model_cfg.image_shape != tuple(datamodule.example_shape):
            raise ConfigError(f"model.image_shape: {data_path} holds images of shape {list(datamodule.example_shape)}: "
                              f"set image_shape to that, got {model_cfg.image_shape}")
    elif model_cfg.image_shape is not None:
        raise ConfigError(f"model.image_shape: {data_path} holds a byte stream, not images: set image_shape to null")


def train(cfg: ExperimentConfig) -> Path:
    """Train (or resume) the experiment; returns the path of its last checkpoint."""
    # Only rank 0 talks to the store (the other ranks' loggers stay idle), before any work.
    client = tracking.connect(cfg.tracking) if cfg.tracking.enabled and rank_zero_only.rank == 0 else None
    datamodule = data_module_from_config(cfg.data, cfg.model.context)
    check_data_fits_model(datamodule, cfg.model, cfg.data.hdf5)
    last = Path(cfg.train.checkpoint_dir) / LAST_CHECKPOINT
    resume_from = last if cfg.train.resume and last.is_file() else None

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)  # the initialization
    module = SparseTransformerModule(dataclasses.asdict(cfg.model), dataclasses.asdict(cfg.train))
    logger, callbacks = False, []
    if cfg.tracking.enabled:
        run_id = read_checkpoint(resume_from).get("mlflow_run_id") if resume_from and client else None
        logger = tracking.training_logger(cfg, client, run_id)
        module.mlflow_run_id = logger.run_id  # None on ranks other than 0, which save no checkpoints
        callbacks.append(tracking.MLflowRun(cfg))
    trainer = build_trainer(cfg.train, logger, callbacks)
    if resume_from is not None:
        print(f"resuming from {resume_from}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    return last
