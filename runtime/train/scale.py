"""How a training stage uses its plan entry's `compute` and `tracking` settings with TRL.

Several processes. torchrun starts N processes per node; every one runs the stage function
(rank 0 through `rlhfspec run`, the others as the registry's worker, see `rlhfspec.cli.launch`).
The HF Trainer wraps the model in DDP and gives each process its share of every batch. The
run directory has one writer: only the main process clears old checkpoints, saves the model
and writes reports (`Group.is_main`); the others wait at a barrier where they would otherwise
read what it is still writing. ``batch_size`` of SFT and the reward model is the *global*
batch: each process takes ``batch_size / N`` examples per step, so the same spec trains on the
same batches with any number of processes (the slow tests compare 1 and 2 processes).

FSDP. With ``strategy: fsdp`` on GPUs the trainer shards with FSDP2 (full sharding of
parameters, gradients and optimizer state; CPU offload as an option) through accelerate.
accelerate applies its FSDP plugin only on accelerators: a gloo run on CPU is MULTI_CPU, and
accelerate 1.15 attaches the plugin only in its accelerator branch (``state.py:986-1016``; the
``ACCELERATE_USE_FSDP`` variable is read there too), so the trainer's ``is_fsdp_enabled`` is
False and ``prepare_model`` wraps DDP (``accelerator.py:2058-2060``), which also refuses a
model sharded with ``fully_shard`` beforehand ("mixed torch.Tensor and DTensor"). On CPU the
stage therefore runs as DDP and says so (validate warns with M003; lineage records
``strategy: ddp``); docs/scale.md has the details. PPO shards itself with ``fully_shard``.

LoRA. `lora_config` turns ``compute.lora`` into PEFT's config for TRL's ``peft_config``
argument (the reward model's score head is trained in full, ``modules_to_save``); QLoRA loads
the frozen base in 4-bit NF4 through bitsandbytes and needs CUDA.

Tracking. `tracking` gives TRL's ``report_to`` and the environment the integrations read
(offline by default: W&B offline mode, MLflow to a file store, TensorBoard event files, all
under the run directory's ``tracking/<stage>/``) and the run id recorded in lineage.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.policy.distributed import Group
from rlhfspec.runtime.stage_api import StageContext

#: TRL's report_to name of each tracking backend.
REPORT_TO = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "trackio": "trackio",
}


def stage_compute(ctx: StageContext) -> dict[str, Any]:
    """The stage's resolved compute settings (the section with the stage's overrides)."""
    compute: dict[str, Any] = ctx.stage["compute"]
    return compute


def group() -> Group:
    """This process among the stage's processes (`SINGLE` without a launcher)."""
    return Group.current()


def per_device(batch: int, what: str, world: int) -> int:
    """A global batch's share per process; the batch must split evenly."""
    if batch % world:
        raise RunError(
            f"{what} ({batch}) is the global batch and must be a multiple of the {world} "
            "training processes; change it or the number of processes"
        )
    return batch // world


def runs_sharded(compute: dict[str, Any], cpu: bool, world: int) -> bool:
    """Whether accelerate will shard this TRL stage (FSDP on accelerators only)."""
    return compute["strategy"] == "fsdp" and world > 1 and not cpu


def scale_args(compute: dict[str, Any], cpu: bool, world: int) -> dict[str, Any]:
    """TrainingArguments for gradient checkpointing and FSDP2."""
    checkpointing = bool(compute["gradient_checkpointing"])
    if runs_sharded(compute, cpu, world):
        return fsdp_args(compute)
    return {
        "activation_checkpointing": checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False} if checkpointing else None,
    }


def fsdp_args(compute: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments that make accelerate shard the model with FSDP2 (on accelerators:
    on CPU accelerate ignores them, see the module docstring). Gradient checkpointing is then
    FSDP's own recomputation: the trainer's would add an all-gather per layer."""
    offload = " offload" if compute["fsdp"]["cpu_offload"] else ""
    return {
        "fsdp": f"full_shard auto_wrap{offload}",
        "fsdp_config": {
            "fsdp_version": 2,
            "reshard_after_forward": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",
            "activation_checkpointing": bool(compute["gradient_checkpointing"]),
        },
        "activation_checkpointing": False,
        "activation_checkpointing_kwargs": None,
    }


def lora_config(compute: dict[str, Any], task: str) -> Any:
    """PEFT's LoraConfig for ``compute.lora`` (None when LoRA is off). `task` is
    ``CAUSAL_LM`` or ``SEQ_CLS`` (the score head then trains in full)."""
    lora = compute["lora"]
    if not lora["enabled"]:
        return None
    from peft import LoraConfig

    targets = lora["target_modules"]
    return LoraConfig(
        r=int(lora["r"]),
        # the spec allows any positive number (scale = alpha / r); PEFT annotates int but
        # divides, so the value goes through as written (32 stays an int)
        lora_alpha=lora["alpha"],
        lora_dropout=float(lora["dropout"]),
        target_modules="all-linear" if "all-linear" in targets else list(targets),
        task_type=task,
        modules_to_save=["score"] if task == "SEQ_CLS" else None,
    )


def quantization(compute: dict[str, Any]) -> Any:
    """bitsandbytes' 4-bit NF4 config for QLoRA (None otherwise); CUDA only."""
    lora = compute["lora"]
    if not (lora["enabled"] and lora["quantize"] == "4bit"):
        return None
    import torch

    if not torch.cuda.is_available() or compute["device"] == "cpu":
        raise RunError("QLoRA (compute.lora.quantize: 4bit) needs a CUDA GPU and bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


# ---------------------------------------------------------------------------------------------
# Tracking


def tracking_dir(ctx: StageContext) -> Path:
    """The stage's local tracking folder: ``tracking/<stage>/``, except trackio's, which is
    one folder for the whole run (``tracking/trackio/``: trackio fixes its directory when it
    is first imported, so every stage of a process writes to the same one; stages are runs
    of the project there)."""
    if ctx.settings["tracking"]["backend"] == "trackio":
        return ctx.path("tracking/trackio")
    return ctx.path(f"tracking/{ctx.stage['name']}")


def tracking_run_id(ctx: StageContext) -> str:
    """A run id the backends accept: the run directory's name and the stage."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{ctx.run_dir.name}-{ctx.stage['name']}")


def _backend_env(
    backend: str, folder: Path, project: str, name: str, run_id: str, offline: bool
) -> dict[str, str]:
    """The variables each integration reads (transformers' callbacks and the clients)."""
    env: dict[str, str] = {}
    if backend == "tensorboard":
        env["TENSORBOARD_LOGGING_DIR"] = str(folder)
    elif backend == "wandb":
        env.update(WANDB_PROJECT=project, WANDB_RUN_ID=run_id, WANDB_NAME=name)
        env.update(WANDB_DIR=str(folder), WANDB_RESUME="allow", WANDB_SILENT="true")
        if offline:
            env["WANDB_MODE"] = "offline"
    elif backend == "mlflow":
        env.update(MLFLOW_EXPERIMENT_NAME=project, MLFLOW_RUN_NAME=name)
        if offline:
            # a local file store: MLflow 3 keeps it in maintenance mode and refuses it unless
            # allowed; its SQL store needs SQLAlchemy, which mlflow-skinny does not ship
            env["MLFLOW_TRACKING_URI"] = (folder / "mlruns").resolve().as_uri()
            env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    elif backend == "trackio":
        env["TRACKIO_PROJECT"] = project
        if offline:
            env["TRACKIO_DIR"] = str(folder)
    return env


def _trackio_dir(folder: Path, log: Any) -> Path:
    """Where trackio writes: its directory is fixed when trackio is first imported, so a
    process that imported it before (with another TRACKIO_DIR) keeps that one."""
    import sys

    module = sys.modules.get("trackio.utils")
    actual = Path(module.TRACKIO_DIR) if module is not None else folder
    if actual.resolve() != folder.resolve():
        log(f"trackio was imported earlier in this process and writes to {actual}")
    return actual


@contextmanager
def tracking_env(ctx: StageContext) -> Iterator[dict[str, Any]]:
    """The environment the tracking integrations read while the stage trains, and what
    lineage records about the run (backend, project, run name and id, local folder).

    Only the main process reports (the integrations check that themselves); the variables are
    restored afterwards so that one stage's run never leaks into the next.
    """
    settings = ctx.settings["tracking"]
    backend = settings["backend"]
    if backend == "none":
        yield {"backend": "none", "report_to": []}
        return
    folder = tracking_dir(ctx)
    project = settings.get("project") or ctx.settings["name"]
    name = f"{settings.get('run_name') or ctx.run_dir.name}-{ctx.stage['name']}"
    run_id = tracking_run_id(ctx)
    offline = settings["mode"] == "offline"
    env = _backend_env(backend, folder, project, name, run_id, offline)
    saved = {k: os.environ.get(k) for k in env}
    if group().is_main:
        folder.mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    where = _trackio_dir(folder, ctx.log) if backend == "trackio" and offline else folder
    try:
        yield {
            "backend": backend,
            "report_to": [REPORT_TO[backend]],
            "project": project,
            "run_name": name,
            "run_id": run_id,
            "mode": settings["mode"],
            "dir": where.relative_to(ctx.run_dir).as_posix()
            if where.is_relative_to(ctx.run_dir)
            else str(where),
        }
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tracking_args(info: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments for the tracking backend: TRL's ``report_to``, the run name, and
    trackio's project (transformers reads it from the arguments, not the environment)."""
    out: dict[str, Any] = {"report_to": info.get("report_to", []), "run_name": info.get("run_name")}
    if info.get("backend") == "trackio":
        out["project"] = info["project"]
    return out


def finish_tracking(info: dict[str, Any]) -> None:
    """After training, inside `tracking_env` (main process): flush the W&B run TRL's callback
    opened before the stage's outputs are recorded (TRL's other integrations close their
    runs at the end of training), and add MLflow's own run id (MLflow makes it up; ours is
    its run name) to `info` for lineage."""
    if not group().is_main:
        return
    if info["backend"] == "wandb":
        import wandb

        if wandb.run is not None:
            wandb.finish()
    elif info["backend"] == "mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient()  # MLFLOW_TRACKING_URI of the stage's environment
        experiment = client.get_experiment_by_name(info["project"])
        runs = [] if experiment is None else client.search_runs([experiment.experiment_id])
        named = [r for r in runs if r.info.run_name == info["run_name"]]
        if named:
            newest = max(named, key=lambda r: r.info.start_time or 0)
            info["backend_run_id"] = newest.info.run_id


def lineage_record(info: dict[str, Any]) -> dict[str, Any]:
    """What lineage keeps about a stage's tracking (not the trainer's report_to list)."""
    return {k: v for k, v in info.items() if k != "report_to"}


# ---------------------------------------------------------------------------------------------
# Training and saving with TRL


def run_trainer(
    ctx: StageContext, build: Any, checkpoints: Path
) -> tuple[Any, float, dict[str, Any]]:
    """Build the trainer (`build(tracking)` with the tracking settings for its arguments),
    train it, and return it with the training loss averaged over every process (each
    process's trainer reports its own shard's) and the tracking record for lineage."""
    from rlhfspec.runtime.train.common import resume_checkpoint, without_printer

    with tracking_env(ctx) as tracking:
        trainer = without_printer(build(tracking))
        result = trainer.train(resume_from_checkpoint=resume_checkpoint(ctx, checkpoints))
        finish_tracking(tracking)
    loss = group().mean_of({"loss": float(result.training_loss)})["loss"]
    return trainer, loss, lineage_record(tracking)


def save_trained(
    trainer: Any, tokenizer: Any, target: Path, metadata: dict[str, Any], meta_name: str
) -> None:
    """Every process calls this: under FSDP the full weights are gathered collectively; the
    main process writes (`save_model`), the others wait until it has."""
    from rlhfspec.runtime.train.common import save_model

    state = None
    if getattr(trainer, "is_fsdp_enabled", False):
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if group().is_main:
        save_model(trainer.model, tokenizer, target, metadata, meta_name, state_dict=state)
    group().barrier()


def weights_sha256(model_dir: Path | str) -> str | None:
    """sha256 over a local model folder's safetensors files (name and hash of each, sorted):
    the base model's identity that LoRA adapters are recorded against."""
    import hashlib

    from rlhfspec.common.hashing import sha256_file

    folder = Path(model_dir)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def compute_record(compute: dict[str, Any], trainer: Any, base: Path | str) -> dict[str, Any]:
    """What lineage and the model's metadata keep about how the stage ran."""
    world = group().world
    lora = compute["lora"]
    record: dict[str, Any] = {
        "processes": world,
        "strategy": "fsdp"
        if getattr(trainer, "is_fsdp_enabled", False)
        else ("ddp" if world > 1 else "single"),
        "gradient_checkpointing": bool(compute["gradient_checkpointing"]),
        "mixed_precision": compute["mixed_precision"],
    }
    if lora["enabled"]:
        record["lora"] = {**lora, "base": str(base), "base_sha256": weights_sha256(base)}
    return record


# ---------------------------------------------------------------------------------------------
# Our own training loops (PPO): gradient checkpointing and metrics to the tracking backend


def enable_checkpointing(model: Any) -> int:
    """Gradient checkpointing for a model that trains in eval mode (PPO keeps dropout off).

    transformers recomputes a decoder layer only while the layer is in training mode; PPO
    calls ``eval()`` on its models. Each checkpointed layer therefore keeps ``training`` set on
    itself whatever mode it is put in, while its children (attention and MLP, where dropout
    lives) follow the mode as usual. Generation runs without gradients, so it never recomputes.
    Returns how many layers recompute.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        original = layer.train

        def train(mode: bool = True, _layer: Any = layer, _original: Any = original) -> Any:
            _original(mode)
            _layer.training = True
            return _layer

        layer.train = train  # type: ignore[method-assign]
        layer.training = True
    return len(layers)


class MetricsTracker:
    """Per-update metrics of our own loops to the stage's tracking backend (main process only).

    The environment comes from `tracking_env`; TensorBoard writes event files with torch's
    SummaryWriter, W&B/MLflow/trackio through their clients, all offline unless `mode` says
    online.
    """

    def __init__(self, info: dict[str, Any], run_dir: Path, enabled: bool) -> None:
        self.backend = info["backend"] if enabled else "none"
        self.client: Any = None
        if self.backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.client = SummaryWriter(log_dir=str(run_dir / info["dir"]))
        elif self.backend == "wandb":
            import wandb

            self.client = wandb.init(
                project=info["project"],
                id=info["run_id"],
                name=info["run_name"],
                dir=str(run_dir / info["dir"]),
                mode=info["mode"],
                resume="allow",
            )
        elif self.backend == "mlflow":
            import mlflow

            self.client = mlflow.start_run(run_name=info["run_name"])
        elif self.backend == "trackio":
            import trackio

            self.client = trackio.init(project=info["project"], name=info["run_name"])

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        numbers = {
            f"train/{k}": float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v
        }
        if self.backend == "tensorboard":
            for key, value in numbers.items():
                self.client.add_scalar(key, value, step)
        elif self.backend == "wandb":
            self.client.log(numbers, step=step)
        elif self.backend == "mlflow":
            import mlflow

            mlflow.log_metrics({k.replace("/", "_"): v for k, v in numbers.items()}, step=step)
        elif self.backend == "trackio":
            import trackio

            trackio.log(numbers, step=step)

    def close(self) -> None:
        if self.backend == "tensorboard":
            self.client.close()
        elif self.backend == "wandb":
            self.client.finish()
        elif self.backend == "mlflow":
            import mlflow

            mlflow.end_run()
        elif self.backend == "trackio":
            import trackio

            trackio.finish()  # type: ignore[no-untyped-call,unused-ignore]


# ---------------------------------------------------------------------------------------------
# LoRA in our own PPO


class AdaptersOff(nn.Module):
    """The base model of a PEFT model, read with its adapters disabled: PPO's KL reference
    under LoRA, without a second copy of the weights. The PEFT model is held outside the
    module tree, so freezing or moving this wrapper never touches the adapters."""

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        self._peft = [peft_model]

    def forward(self, **kwargs: Any) -> Any:
        model = self._peft[0]
        with model.disable_adapter():
            return model(**kwargs)


def with_lora(model: Any, lora: dict[str, Any], task: str, adapter: Path | None = None) -> Any:
    """`model` with trainable LoRA adapters (new, or restored from `adapter` on resume)."""
    from peft import PeftModel, get_peft_model

    if adapter is not None:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    config = lora_config({"lora": {**lora, "enabled": True}}, task)
    return get_peft_model(model, config)


def save_pretrained_merged(model: Any, folder: Path) -> None:
    """A PEFT model as its adapters under ``folder/adapter`` and the merged weights at the
    top (a copy is merged: training goes on with the adapters); any other model as it is."""
    if not hasattr(model, "merge_and_unload"):
        model.save_pretrained(folder, safe_serialization=True)
        return
    import copy

    model.save_pretrained(folder / "adapter", safe_serialization=True)
    copy.deepcopy(model).merge_and_unload().save_pretrained(folder, safe_serialization=True)
