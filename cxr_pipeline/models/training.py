"""One training loop for every model: AdamW + cosine schedule with warm-up, gradient clipping,
EMA weights, mixed precision on GPU, atomic checkpoints and automatic resume.

Determinism: the batch of step ``s`` and the noise drawn at step ``s`` depend only on (seed, s),
never on what ran before, so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have (bit for bit on CPU).

Checkpoints are folders written under a temporary name and renamed into place: model and EMA
weights as safetensors, optimizer/scheduler state, and a JSON with the step and config. One
process at a time trains in a run folder (its writer lock, :mod:`..data.locks`): a second launch
of the same run waits, then resumes from where the first stopped.

Under ``torchrun`` the same loop is data-parallel (see :mod:`.distributed`): every rank draws its
own noise stream, so a resumed run matches the uninterrupted one for the same number of ranks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from .. import compute
from ..data import atomic, locks
from . import distributed

logger = logging.getLogger(__name__)


def pick_device(preference: str | torch.device = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; or exactly what was asked for (a name or a device)."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def step_generator(seed: int, step: int, device: torch.device | str = "cpu", stream: int = 0) -> torch.Generator:
    """The random stream of one step: the same whether or not the run was resumed. ``stream``
    separates data-parallel ranks, so they never draw the same noise."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step + stream * 7_919_000_017) % (2**63 - 1))


def run_key(*parts: object) -> str:
    """Runs with the same model, training config and data share a folder, so a restart resumes."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    checkpoint_every: int = 100
    eval_every: int = 100
    log_every: int = 20
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"  # "auto" | "no" | "bf16" | "fp16"; see autocast_dtype
    preview_steps: int = 20  # DDIM steps of the sample grids a diffusion training logs at each validation
    cpu_bf16: bool = False  # "auto" also autocasts to bf16 on CPUs with native bf16 instructions

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run (so a restart resumes): not logging or device."""
        ignored = {"log_every", "keep_checkpoints", "device", "checkpoint_every", "preview_steps"}
        return {k: v for k, v in asdict(self).items() if k not in ignored}


@dataclass
class TrainingOutcome:
    """What every training run hands to the layer that registers it: the same shape for the VAE,
    the classifier and the diffusion models, so one path logs, registers and reports them all."""

    kind: str
    run_dir: Path
    model_dir: Path  # the EMA weights, in the model's own folder format
    final_step: int
    resumed_from: int | None
    metrics: dict[str, float] = field(default_factory=dict)  # the last validation
    previews: dict[int, np.ndarray] = field(default_factory=dict)  # step -> image grid in [0, 1]

    def save(self, folder: Path) -> None:
        """For the process that launched an out-of-process run to read back."""
        with atomic.atomic_folder(Path(folder)) as tmp:
            grids: dict[str, Any] = {f"step_{step}": grid for step, grid in self.previews.items()}
            np.savez(tmp / "previews.npz", **grids)
            (tmp / "outcome.json").write_text(
                json.dumps(
                    {
                        "kind": self.kind,
                        "run_dir": str(self.run_dir),
                        "model_dir": str(self.model_dir),
                        "final_step": self.final_step,
                        "resumed_from": self.resumed_from,
                        "metrics": self.metrics,
                    },
                    indent=2,
                )
            )

    @classmethod
    def load(cls, folder: Path) -> TrainingOutcome:
        if not (Path(folder) / "outcome.json").exists():
            raise FileNotFoundError(f"no training outcome in {folder}: the training process ended without writing one")
        raw = json.loads((Path(folder) / "outcome.json").read_text())
        with np.load(Path(folder) / "previews.npz") as stored:
            previews = {int(name.removeprefix("step_")): stored[name] for name in stored.files}
        return cls(
            raw["kind"],
            Path(raw["run_dir"]),
            Path(raw["model_dir"]),
            raw["final_step"],
            raw["resumed_from"],
            raw.get("metrics", {}),
            previews,
        )


@dataclass
class TrainEvent:
    kind: str  # "step" | "eval" | "checkpoint" | "resume" | "wait"
    step: int
    total_steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    images_per_s: float = 0.0
    eta_s: float = 0.0
    note: str = ""  # "wait": who holds the run folder
    part: str = ""  # which part of a model with several trained in one run ("decoder"); "" for the model

    def describe(self) -> str:
        """One log line, the same wherever the training runs."""
        return f"{self.part}: {self._describe()}" if self.part else self._describe()

    def _describe(self) -> str:
        if self.kind == "step":
            threads = f" on {self.metrics['threads']} threads" if "threads" in self.metrics else ""
            return (
                f"step {self.step}/{self.total_steps} loss {self.metrics['loss']:.5f} "
                f"{self.images_per_s:.1f} img/s{threads}, ETA {self.eta_s:.0f}s"
            )
        if self.kind == "eval":
            return f"step {self.step} validation {self.metrics}"
        if self.kind == "resume":
            return f"resuming from the checkpoint at step {self.step}"
        if self.kind == "wait":
            return f"another training holds this run folder: {self.note}"
        return f"{self.kind} at step {self.step}"

    def logged_metrics(self) -> dict[str, float]:
        """The metrics this event adds to the training curves (``train_*`` for steps), prefixed
        with the part's name (``decoder_train_loss``) when it has one."""
        if self.kind == "step":
            metrics = {f"train_{k}": v for k, v in self.metrics.items()} | {
                "images_per_s": self.images_per_s,
                "eta_s": self.eta_s,
            }
        elif self.kind == "eval":
            metrics = dict(self.metrics)
        else:
            return {}
        return {f"{self.part}_{k}": v for k, v in metrics.items()} if self.part else metrics


# Level of each training event in the library's log: a notebook sees progress at INFO, a waiting
# or resumed run at WARNING; checkpoints are DEBUG.
EVENT_LEVELS = {"step": logging.INFO, "eval": logging.INFO, "resume": logging.WARNING, "wait": logging.WARNING}


def logged(progress: Callable[[TrainEvent], None] | None) -> Callable[[TrainEvent], None]:
    """``progress`` after the event is written to this module's logger (which the Dagster layer
    routes into the run's log), so a training is followed the same way in Dagster and a notebook."""

    def report(event: TrainEvent) -> None:
        logger.log(EVENT_LEVELS.get(event.kind, logging.DEBUG), event.describe())
        if progress is not None:
            progress(event)

    return report


# Who hears a training's events: an asset's log and MLflow curves, a worker's stdout, a bench's print.
TrainProgress = Callable[[TrainEvent], None]

# A training step: (model, batch on device, the step's generator) -> (loss, extra metrics).
StepFn = Callable[[torch.nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
# Batches by step number, on the CPU: deterministic data order.
BatchFn = Callable[[int], Any]
# Evaluation on the EMA weights after a step: (model, step) -> metrics.
EvalFn = Callable[[torch.nn.Module, int], dict[str, float]]


@dataclass
class TrainResult:
    final_step: int
    resumed_from: int | None
    ema_model: torch.nn.Module
    last_eval: dict[str, float]
    history: list[TrainEvent]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls and convolutions in hardware, not emulated (slower)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def explicit_attention(model: torch.nn.Module) -> int:
    """Every diffusers attention layer of ``model`` computed as two matmuls and a softmax
    (``AttnProcessor``) instead of PyTorch's fused scaled-dot-product kernel; returns how many.
    For CPU bf16 training: the CPU flash kernel's backward is slow in bf16 at narrow heads (the
    demo's 8 channels): 1.9 of 4.2 s over three text-model steps, which made bf16 slower than fp32
    there; with explicit attention the step is 0.62x to 0.75x fp32's (bench/cpu_bf16.py). The values
    are the same to bf16's rounding; the processor is not saved with the model. Sampling in CPU bf16
    uses it too (docs/recipes.md#sampling-precision-per-kind-cpu_bf16)."""
    layers = [module for module in model.modules() if isinstance(module, Attention)]
    for layer in layers:
        layer.set_processor(AttnProcessor())
    return len(layers)


def precision_dtype(mode: str, device: torch.device, *, cpu_bf16: bool) -> torch.dtype | None:
    """The autocast type for ``mode`` ("auto" | "no" | "bf16" | "fp16", accelerate's words), for
    training and sampling alike. "auto": bf16 on CUDA (fp16 where bf16 is missing); on CPU bf16
    only where the caller measured it on val (``cpu_bf16``) and only on CPUs with native bf16;
    otherwise fp32. None means fp32."""
    if mode not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"mixed precision must be 'auto', 'no', 'bf16' or 'fp16', got {mode!r}")
    if mode == "no":
        return None
    if device.type == "cpu":
        if mode == "bf16":
            return torch.bfloat16
        return torch.bfloat16 if mode == "auto" and cpu_bf16 and cpu_has_native_bf16() else None
    if device.type != "cuda":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The training step's autocast type: the recipe's ``cpu_bf16`` is where bench/cpu_bf16.py
    measured bf16 faster and val kept its figures. Weights, optimizer state and EMA stay fp32."""
    return precision_dtype(config.mixed_precision, device, cpu_bf16=config.cpu_bf16)


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        step_fn: StepFn,
        batches: BatchFn,
        config: TrainConfig,
        run_dir: Path,
        *,
        batch_size_of: Callable[[Any], int] | None = None,
        evaluate: EvalFn | None = None,
        progress: Callable[[TrainEvent], None] | None = None,
    ):
        self.config = config
        self.group = distributed.current()
        self.device = pick_device(config.device)
        if self.device.type == "cuda" and self.device.index is None and self.group.distributed:
            self.device = torch.device("cuda", self.group.local_rank)
        self.model = model.to(self.device)
        # The module the step runs: DDP averages gradients over ranks; ``model`` stays the plain
        # module for checkpoints, EMA and evaluation.
        self.network = (
            torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.group.distributed
            else self.model
        )
        self.step_fn, self.batches, self.evaluate = step_fn, batches, evaluate
        self.progress = logged(progress)
        self.batch_size_of = batch_size_of or (lambda batch: config.batch_size)
        self.run_dir = Path(run_dir)
        # A model may ask for its own learning rates per part (``parameter_groups(learning_rate)``),
        # as a pretrained text encoder's layers fine-tuned beside a UNet trained from scratch do.
        parameter_groups = getattr(model, "parameter_groups", None)
        groups = parameter_groups(config.learning_rate) if parameter_groups is not None else model.parameters()
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, config.warmup_steps, config.steps)
        self.ema = EMAModel(model.parameters(), decay=config.ema_decay)
        self.ema.to(self.device)
        self.dtype = autocast_dtype(config, self.device)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            explicit_attention(self.model)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)

    # --- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoint_dir / "latest"
        if not pointer.exists():
            return None
        path = self.checkpoint_dir / pointer.read_text().strip()
        return path if (path / "state.json").exists() else None

    def save_checkpoint(self, step: int) -> Path:
        final = self.checkpoint_dir / f"step-{step:07d}"
        with atomic.atomic_folder(final) as tmp:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                tmp / "model.safetensors",
            )
            shadow = {f"p{i}": p.detach().cpu().contiguous() for i, p in enumerate(self.ema.shadow_params)}
            save_file(shadow, tmp / "ema.safetensors")
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "ema_step": self.ema.optimization_step,
                },
                tmp / "trainer.pt",
            )
            (tmp / "state.json").write_text(json.dumps({"step": step, "config": self.config.identity()}, indent=2))
        atomic.write_text(self.checkpoint_dir / "latest", final.name)
        kept = sorted(p for p in self.checkpoint_dir.glob("step-*") if p.is_dir())
        for old in kept[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path) -> int:
        self.model.load_state_dict(load_file(path / "model.safetensors", device=str(self.device)))
        shadow = load_file(path / "ema.safetensors", device=str(self.device))
        for i, parameter in enumerate(self.ema.shadow_params):
            parameter.data.copy_(shadow[f"p{i}"])
        state = torch.load(path / "trainer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.ema.optimization_step = int(state["ema_step"])
        return int(json.loads((path / "state.json").read_text())["step"])

    # --- the loop ------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run folder's writer lock: ``fit`` takes it, and callers wrap ``fit`` and the
        saving of the final model in it so a waiting run resumes only after both. Only rank 0
        locks; the other ranks wait for it at the barrier in ``fit``."""
        if not self.group.is_main:
            yield
            return
        with locks.exclusive(
            self.run_dir,
            f"training {self.run_dir.name}",
            on_wait=lambda holder: self.progress(TrainEvent("wait", 0, self.config.steps, note=holder)),
        ):
            yield

    def fit_and_save(
        self, model_dir: Path, save: Callable[[TrainResult, Path], None], stop_after: int | None = None
    ) -> TrainResult:
        """``fit``, then ``save(result, folder)`` writes the model folder atomically from the main
        process, both under the run folder's lock: a waiting run resumes only after both, and
        nobody reads a half-written model."""
        with self.exclusive():
            result = self.fit(stop_after=stop_after)
            if self.group.is_main:
                with atomic.atomic_folder(Path(model_dir)) as tmp:
                    save(result, tmp)
        return result

    def ema_model(self) -> torch.nn.Module:
        """A copy of the model holding the EMA weights (the weights we evaluate and ship)."""
        clone = copy.deepcopy(self.model)
        self.ema.copy_to(clone.parameters())
        return clone.eval()

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.steps``, resuming from the latest checkpoint in ``run_dir`` if any.
        ``stop_after`` ends this call early (after that many steps), as a crash would."""
        with self.exclusive():
            if self.group.distributed:
                torch.distributed.barrier()  # the checkpoint is read once rank 0 holds the lock
            return self._fit(stop_after)

    def _fit(self, stop_after: int | None) -> TrainResult:
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start, resumed_from = 0, None
        latest = self.latest_checkpoint()
        if latest is not None:
            start = resumed_from = self.load_checkpoint(latest)
            if self.group.is_main:
                self.progress(TrainEvent("resume", start, config.steps))
        history: list[TrainEvent] = []
        last_eval: dict[str, float] = {}
        window_started, window_images = time.perf_counter(), 0
        end = config.steps if stop_after is None else min(config.steps, start + stop_after)
        self.model.train()
        main = self.group.is_main
        for step in range(start, end):
            compute.rebalance()  # the step's share of the cores, as other steps start and end
            batch = _to_device(distributed.shard(self.batches(step), self.group), self.device)
            generator = step_generator(config.seed, step, self.device, stream=self.group.rank)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                loss, extra = self.step_fn(self.network, batch, generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower the learning rate")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.ema.step(self.model.parameters())
            window_images += self.batch_size_of(batch) * self.group.world_size
            done = step + 1
            log_now = done % config.log_every == 0 or done == end
            if log_now:
                loss = distributed.mean_over_ranks(loss, self.group)  # a collective: every rank calls it
            if main and log_now:
                elapsed = time.perf_counter() - window_started
                rate = window_images / elapsed if elapsed > 0 else 0.0
                remaining = (config.steps - done) * config.batch_size / rate if rate else math.inf
                # threads: the step's share of the cores, which changes as steps beside it start and end
                metrics = {
                    "loss": float(loss.item()),
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "threads": torch.get_num_threads(),
                    **extra,
                }
                event = TrainEvent("step", done, config.steps, metrics, rate, remaining)
                history.append(event)
                self.progress(event)
                window_started, window_images = time.perf_counter(), 0
            if main and self.evaluate and (done % config.eval_every == 0 or done == config.steps):
                with torch.no_grad():
                    last_eval = self.evaluate(self.ema_model(), done)
                event = TrainEvent("eval", done, config.steps, last_eval)
                history.append(event)
                self.progress(event)
                self.model.train()
            if main and (done % config.checkpoint_every == 0 or done == config.steps):
                self.save_checkpoint(done)
                self.progress(TrainEvent("checkpoint", done, config.steps))
        ema_model = self.ema_model()
        if self.group.distributed:
            torch.distributed.barrier()  # the other ranks wait for rank 0's last checkpoint
        if main and self.evaluate and not last_eval:  # e.g. restarted after the final checkpoint
            with torch.no_grad():
                last_eval = self.evaluate(ema_model, end)
        return TrainResult(end, resumed_from, ema_model, last_eval, history)
