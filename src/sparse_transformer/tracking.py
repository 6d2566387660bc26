"""MLflow: where runs are recorded, and what each stage records in them.

Store: `tracking.tracking_uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in
the working directory with artifacts in mlruns/ beside it. Every stage first checks that
the store answers (`connect`), so a run against an unreachable server stops before any
work with a message that says what to do.

Runs: one experiment per dataset (`tracking.experiment`, else the stem of the HDF5
file: enwik8.h5 -> "enwik8"), tagged as model training (`mlflow.experimentKind`), not
GenAI (MLflow 3.17's UI follows its own GenAI / Model training switch instead). Training
creates the run through Lightning's MLFlowLogger (`training_tracking`, the one part
that needs Lightning) and records its id in
every checkpoint; a resumed run, `evaluate` and `sample` log into that same run. Per run:
a description and tags that tell runs apart (dataset, pattern, model, parameters, git
commit), the whole configuration as parameters, training and validation bits per dim,
learning rate, tokens/s and GPU memory per step (through the logger), system metrics from
MLflow's own monitor (rank 0), the evaluation metrics, and the samples: images through
`log_image` (the UI shows them per step), audio and text as artifacts.

Steps: step N is the N-th optimizer step, as in curve.csv and the checkpoints. A resumed
run does not log a (metric, step) the run already holds. A store that fails while
training runs does not stop it: the failure is reported once, and at the end what was
not recorded.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .config import ExperimentConfig, TrackingConfig, flatten
from .errors import UserError, cut

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_DATABASE = "mlflow.db"
# MLflow's experiment tag for what an experiment is for: model training, not GenAI.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class TrackingError(UserError):
    """The MLflow tracking store cannot be reached or used."""


def tracking_uri(cfg: TrackingConfig) -> str:
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / DEFAULT_DATABASE}"


def artifact_location(uri: str) -> str | None:
    """mlruns/ beside a sqlite database; a tracking server chooses its own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


def experiment_name(cfg: ExperimentConfig) -> str:
    return cfg.tracking.experiment or Path(cfg.data.hdf5).stem


@contextmanager
def _no_retries(timeout: float) -> Iterator[None]:
    """MLflow's HTTP client retries for minutes by default; the connectivity check must not."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(timeout)))}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _store_lock(uri: str) -> contextlib.AbstractContextManager:
    """The first client to open a sqlite store creates its tables; two stages starting at
    once (Snakemake runs jobs side by side) would both create them, and one would fail
    ("table ... already exists"). A file lock beside the database makes them take turns
    at opening it; a tracking server needs none."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(uri.removeprefix("sqlite:///") + ".lock")


def connect(cfg: TrackingConfig) -> MlflowClient:
    """A client of the configured store, after checking that it answers within cfg.connect_timeout s."""
    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    with _no_retries(cfg.connect_timeout), _store_lock(uri):
        try:
            client = MlflowClient(uri)  # a sqlite store is opened (and migrated) here
            client.search_experiments(max_results=1)
        except Exception as err:  # MLflow raises many kinds (connection, HTTP, database errors)
            raise TrackingError(
                f"the MLflow tracking store {uri} does not answer ({reason(err)}). Start the tracking server, "
                "point MLFLOW_TRACKING_URI (or tracking.tracking_uri) at a running one, unset it to log to "
                f"sqlite:///{DEFAULT_DATABASE} here, or set tracking.enabled: false"
            ) from None
    return client


def reason(err: BaseException) -> str:
    """The first line of an exception, cut to a readable length."""
    return cut(str(err).strip().splitlines()[0], 300) if str(err).strip() else type(err).__name__


def training_experiment(client: MlflowClient, cfg: ExperimentConfig) -> str:
    """The id of the experiment's MLflow experiment, created if missing, marked as model training."""
    name = experiment_name(cfg)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name, artifact_location=artifact_location(tracking_uri(cfg.tracking)))
        tags = {}
    else:
        experiment_id, tags = experiment.experiment_id, experiment.tags
    key, kind = EXPERIMENT_KIND
    if key not in tags:  # an experiment whose kind someone chose in the UI keeps it
        client.set_experiment_tag(experiment_id, key, kind)
    return experiment_id


def existing_run(client: MlflowClient, run_id: str | None) -> str | None:
    """run_id if the store holds that run (a checkpoint may come from another store), else None."""
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return None
    try:
        client.get_run(run_id)
    except MlflowException:
        return None
    return run_id


def stage_run(cfg: ExperimentConfig, client: MlflowClient, run_id: str | None) -> str:
    """The run evaluate and sample log into: the training run, else a new one in the experiment."""
    found = existing_run(client, run_id)
    if found is not None:
        return found
    run = client.create_run(training_experiment(client, cfg), run_name=cfg.tracking.run_name)
    log_config(client, run.info.run_id, cfg)
    describe_run(client, run.info.run_id, cfg)
    return run.info.run_id


def compact_count(count: int) -> str:
    """A parameter count at a glance: 136448 -> "136K", 94949888 -> "94.9M"."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            return f"{count / size:.1f}{unit}" if count < 100 * size else f"{count / size:.0f}{unit}"
    return str(count)


def run_tags(cfg: ExperimentConfig, parameters: int | None = None) -> dict[str, str]:
    """Tags that tell runs apart at a glance (on the run's page, or as columns of the runs
    table): the data, the pattern, the model's size, and the git commit of the working directory (MLflow's own tag, which the UI
    shows as the run's version)."""
    from mlflow.utils.git_utils import get_git_commit

    model = cfg.model
    tags = {
        "dataset": Path(cfg.data.hdf5).stem,
        "pattern": model.describe_attention(),  # the pattern, and its named mask if any
        "model": f"{model.layers} layers, d={model.d_model}, {model.heads} heads, context {model.context}",
    }
    if parameters is not None:
        tags["parameters"] = compact_count(parameters)
    commit = get_git_commit(os.getcwd())
    if commit is not None:
        tags["mlflow.source.git.commit"] = commit
    return tags


def run_description(cfg: ExperimentConfig, tags: dict[str, str]) -> str:
    """The run's description, shown on its page in the UI."""
    data, train = cfg.data, cfg.train
    source = f"{data.dataset} from {data.input}" if data.input else data.dataset
    length = f"{train.max_steps:,} steps" if train.max_steps else f"{train.max_epochs} epochs"
    size = f", {tags['parameters']} parameters" if "parameters" in tags else ""
    commit = tags.get("mlflow.source.git.commit")
    return (f"{tags['dataset']}: {source}. Model: {tags['model']}{size}; attention {tags['pattern']}. "
            f"Training: {length}, batch {data.batch_size}, learning rate {train.learning_rate:g}."
            + (f" Code: commit {commit[:10]}." if commit else ""))


def describe_run(client: MlflowClient, run_id: str, cfg: ExperimentConfig, parameters: int | None = None) -> None:
    """Set the run's tags and, unless it has one (perhaps written in the UI), its description."""
    tags = run_tags(cfg, parameters)
    if "mlflow.note.content" not in client.get_run(run_id).data.tags:
        tags["mlflow.note.content"] = run_description(cfg, tags)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def log_config(client: MlflowClient, run_id: str, cfg: ExperimentConfig) -> None:
    """Every configuration field as a parameter. MLflow parameters cannot change, so a
    resumed run adds only the ones it lacks (its changed values stay in params.yaml)."""
    from mlflow.entities import Param

    present = client.get_run(run_id).data.params
    params = [Param(key, str(value)) for key, value in flatten(cfg.to_dict()).items() if key not in present]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
        client.log_batch(run_id, params=params[start:start + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, step=step)


def log_samples(client: MlflowClient, run_id: str, files: list[Path], images: dict[Path, Any], step: int) -> None:
    """The sample files, each once: those in `images` (path -> the PIL image written there)
    through log_image, which the UI shows per step (MLflow keeps a compressed preview
    beside each), the others (audio, text) as artifacts under samples/."""
    for path in files:
        if path in images:
            client.log_image(run_id, images[path], key=path.stem, step=step)  # samples, completions
        else:
            client.log_artifact(run_id, str(path), artifact_path="samples")
