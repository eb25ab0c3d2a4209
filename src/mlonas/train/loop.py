"""The evaluation-training loop shared by the CIFAR and ImageNet stages.

Evaluation training is the most expensive step of the workflow (600 CIFAR epochs per
seed, 250 ImageNet epochs on 8 GPUs), so it is built around four guarantees:

* **Resumable, and bitwise so on CPU.** After every epoch a checkpoint with the model,
  optimizer and scheduler state, the history so far, the torch RNG state of every
  process and a *fingerprint* of everything that defines the run is written atomically to
  ``<out_dir>/checkpoint.pt``. A restarted job resumes from it only if the fingerprint
  matches; a resumed CPU run ends bitwise identical to an uninterrupted one, because all
  randomness is torch randomness seeded from the run's seed (model init, drop path,
  augmentations), epoch data order is a function of ``(seed, epoch)`` only, and the RNG
  state is restored at the epoch boundary. The checkpoint is deliberately *not* a declared
  Snakemake output: Snakemake deletes declared outputs before a job starts, which would
  throw away exactly what a restarted job needs.
* **Nothing partial.** ``metrics.json``, ``history.csv`` and ``model.pt`` are written
  atomically only after the final epoch (``metrics.json`` last, as the completion
  marker); outputs of an earlier, different run in the same directory are removed when
  training starts, so they can never be mistaken for this run's.
* **Divergence is a result, not a crash.** A non-finite training loss ends the run
  early but *successfully*: the outputs are written marked ``"diverged": true`` with
  where it happened (``diverged_at``: epoch, step, which loss, its value), the history of
  the epochs completed before it, and ``model.pt`` holding the weights *as they were* at
  the diverging step (the state that produced the non-finite loss, for diagnosis; the
  last finite epoch stays in ``checkpoint.pt``). One line ``... diverged at epoch E step
  S ...`` goes to the log and the command exits 0. Why not an error: Snakemake deletes the
  outputs of a failed job, and the table must show the seed as *diverged* (counted, its
  error excluded) rather than silently lose it. A rerun resumes from the last checkpoint
  and diverges at the same step again (the run is deterministic).
* **One loop for one process and for DDP.** Under ``torchrun`` (``WORLD_SIZE > 1``) the
  same code wraps the model in DistributedDataParallel, shards the data with a seeded
  DistributedSampler, all-reduces the statistics, and only rank 0 writes files.

Speed: ``precision: bf16`` runs forward and loss under ``torch.autocast``
with bfloat16 on the run's device type (the weights, their gradients and the SGD update
stay fp32; ``fp32`` is the papers' exact arithmetic); ``channels_last`` keeps the model
and its inputs NHWC; ``compile`` wraps the training model in ``torch.compile`` and falls
back to eager mode, with one logged line, on any compile error; CIFAR's ``loader:
device`` (:mod:`mlonas.data.device`) makes the batches on the device with seeded torch
ops. All of them are settings, hence part of the fingerprint and the provenance.

Epochs are numbered from 1 in everything a user sees (history, logs, errors).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from mlonas.checkpoint import Diverged, check_finite
from mlonas.errors import MlonasError
from mlonas.io import (
    LAUNCHER_HOLDS_ENV,
    atomic_torch_save,
    atomic_write_json,
    hold_output_dir,
    sha256_file,
)
from mlonas.runstate import RunState, step_bar, write_history
from mlonas.runtime import cosine_lr, resolve_device
from mlonas.settings import EvalSettings
from mlonas.space.evalnet import count_params_m, set_drop_path
from mlonas.space.genotype import Genotype

OUTPUTS = ("metrics.json", "history.csv", "model.pt")
HISTORY_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top5",
    "wall_time_s",
)


# What one epoch iterates over: a DataLoader, or mlonas.data.device's DeviceBatches.
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


# One epoch's batches: :func:`mlonas.data.loaders.epoch_loader`'s signature and contract,
# an order that depends only on ``(seed, epoch)`` (bitwise resume rests on it). ImageNet's
# device decoding (:class:`mlonas.data.imagenet_gpu.DeviceLoaderFactory`) and tests pass
# their own; each forwards what it does not use to ``epoch_loader``.
LoaderFactory = Callable[..., Batches]


log = logging.getLogger(__name__)


# -- learning-rate schedules (multipliers of the base lr at a 0-based epoch) -------------


def cosine_factor(
    epoch: int, epochs: int, lr: float, lr_min: float, step_first: bool = False
) -> float:
    """DARTS' CIFAR schedule: cosine from ``lr`` to ``lr_min``, stepped once per epoch
    (``step_first``: as the official ``train.py``, see :func:`mlonas.runtime.cosine_lr`)."""
    return cosine_lr(epoch, epochs, lr, lr_min, step_first) / lr


def imagenet_factor(epoch: int, epochs: int, schedule: str, warmup_epochs: int) -> float:
    """PC-DARTS / P-DARTS ImageNet schedule, stepped once per epoch.

    ``warmup_epochs`` of linear warm-up (``(e + 1) / warmup``, needed for the large
    1024-sample batch), otherwise linear decay ``1 - e / epochs`` towards 0 or a cosine.
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    if schedule == "linear":
        return 1.0 - epoch / epochs
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    raise MlonasError(f"params: eval.imagenet.lr_schedule: unknown schedule {schedule!r}")


# -- the run description -----------------------------------------------------------------


@dataclass(frozen=True)
class TrainJob:
    """Everything that defines one evaluation run (and therefore its fingerprint).

    ``settings`` are the eval settings actually used (``eval.cifar`` / ``eval.imagenet``;
    keys used here: epochs, batch_size, lr, momentum, weight_decay, grad_clip, drop_path,
    auxiliary_weight, label_smoothing, num_workers). ``lr_factor(epoch)`` multiplies
    ``settings.lr`` at a 0-based epoch. ``extra`` goes into metrics.json and the
    fingerprint (e.g. the ImageNet transfer's source dataset).
    """

    stage: str
    dataset: str
    method: str
    seed: int
    settings: EvalSettings
    genotype: Genotype
    genotype_path: str
    split_path: str
    out_dir: str
    lr_factor: Callable[[int], float]
    extra: dict[str, Any] = field(default_factory=dict)
    # provenance only (not the fingerprint): the params keys the job read and the --set
    # overrides among them, so `mlonas audit` can compare with today's params
    tracked: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[DistContext, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; otherwise one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), resolve_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), owns), dev


def run_definition(job: TrainJob, world_size: int) -> dict[str, Any]:
    """What defines the run, hashed into the checkpoint's fingerprint: params, genotype,
    input hashes, seed and world size.

    The world size is part of it because it changes the per-process batch and the data
    sharding, i.e. the experiment; resuming under another world size would silently mix
    two different runs.
    """
    payload = {
        "stage": job.stage,
        "dataset": job.dataset,
        "method": job.method,
        "seed": job.seed,
        "params": job.settings.to_params(),
        "genotype": job.genotype.to_dict(),
        "inputs": {
            "genotype": sha256_file(job.genotype_path),
            "split": sha256_file(job.split_path),
        },
        "world_size": world_size,
        "extra": job.extra,
    }
    return payload


def _default_loader() -> LoaderFactory:
    from mlonas.data.loaders import epoch_loader  # lazy: keeps train importable alone

    return epoch_loader


# -- one epoch ---------------------------------------------------------------------------


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    top = logits.topk(min(k, logits.size(1)), dim=1).indices
    return (top == target.unsqueeze(1)).any(dim=1).sum()


def _all_reduce(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


@dataclass(frozen=True)
class Arithmetic:
    """How a step computes: autocast dtype (``None``: fp32) and the inputs' memory format."""

    autocast: torch.dtype | None = None
    memory_format: torch.memory_format = torch.contiguous_format

    @classmethod
    def of(cls, settings: EvalSettings) -> Arithmetic:
        if settings.precision not in ("bf16", "fp32"):
            raise MlonasError(f"params: precision: unknown precision {settings.precision!r}")
        return cls(
            torch.bfloat16 if settings.precision == "bf16" else None,
            torch.channels_last if settings.channels_last else torch.contiguous_format,
        )

    def context(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """Autocast on ``device``'s type, or nothing for fp32."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)

    def inputs(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        return x.to(device, non_blocking=True, memory_format=self.memory_format)


class CompiledOrEager:
    """``torch.compile(model)`` that turns into ``model`` on the first compile error.

    ``torch.compile`` is lazy: tracing and code generation happen at the first call (and
    again when a guard fails, e.g. when drop path switches on after epoch 1), so errors
    surface there, not at ``torch.compile``. Each call therefore runs the compiled model
    inside ``try``; on an exception it logs one line saying why, restores the torch RNG
    state of before the call (tracing must not shift drop path's draws), switches to
    the eager model for good and redoes the call eagerly; an error the eager model
    raises too is a real one and propagates. The backward graph is lowered together with
    the forward (``force_non_lazy_backward_lowering``), so its compile errors are caught
    here as well instead of surfacing in ``loss.backward()``.
    """

    def __init__(self, model: nn.Module, where: str) -> None:
        self.eager, self.where = model, where
        self.compiled: Callable[..., Any] | None = None
        try:
            with contextlib.suppress(AttributeError):  # absent in some torch versions
                torch._functorch.config.force_non_lazy_backward_lowering = True  # type: ignore[attr-defined]
            self.compiled = torch.compile(model)
        except Exception as exc:  # any compile error means: run eagerly
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        why = " ".join(str(exc).split())[:300] or type(exc).__name__
        log.warning(
            "%s: torch.compile failed (%s: %s); training continues in eager mode",
            self.where, type(exc).__name__, why,
        )  # fmt: skip
        self.compiled = None

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args)
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        try:
            return self.compiled(*args)
        except Exception as exc:  # see the class docstring
            self._fall_back(exc)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            return self.eager(*args)

    def train(self, mode: bool = True) -> CompiledOrEager:
        self.eager.train(mode)
        return self

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.eager.parameters()


def _train_epoch(
    job: TrainJob,
    ctx: DistContext,
    model: nn.Module | CompiledOrEager,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    device: torch.device,
    epoch: int,
    arith: Arithmetic | None = None,
) -> tuple[float, float]:
    """Train one epoch; returns (mean objective, top-1 accuracy %) over all processes."""
    arith = arith or Arithmetic()
    aux_weight = float(job.settings.auxiliary_weight)
    grad_clip = float(job.settings.grad_clip)
    model.train()
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    epochs = int(job.settings.epochs)
    where = f"{job.stage} {job.dataset}/{job.method}/seed{job.seed}"
    bar = step_bar(loader, len(loader), f"{where} epoch {epoch + 1}/{epochs}", ctx.is_main)  # type: ignore[arg-type]
    for step, (x, y) in enumerate(bar):
        x = arith.inputs(x, device)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with arith.context(device):  # the loss too: autocast runs cross-entropy in fp32
            logits, aux_logits = model(x)
            loss = criterion(logits, y)
            if aux_logits is not None and aux_weight > 0:
                loss = loss + aux_weight * criterion(aux_logits, y)
        # Reduced across ranks so every rank sees a non-finite loss at the same step and
        # they all stop together, instead of the healthy ones hanging in the next all-reduce.
        total = _all_reduce(ctx, loss.detach().to(torch.float64).reshape(1).clone())
        check_finite(
            total.sum(),
            epoch + 1,
            step + 1,
            job.seed,
            context=f" in {job.stage} {job.dataset}/{job.method}",
        )
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        n = y.size(0)
        stats[0] += loss.detach().to(torch.float64) * n
        stats[1] += _topk_correct(logits.detach(), y, 1)
        stats[2] += n
        if not bar.disable:  # .item() waits for the GPU: only for a bar someone sees
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    loss_sum, correct, count = _all_reduce(ctx, stats).tolist()
    return loss_sum / max(count, 1.0), 100.0 * correct / max(count, 1.0)


@torch.no_grad()
def evaluate(
    net: nn.Module,
    loader: Batches,
    criterion: nn.Module,
    device: torch.device,
    ctx: DistContext | None = None,
    arith: Arithmetic | None = None,
) -> tuple[float, float, float]:
    """(mean loss, top-1 %, top-5 %) of ``net`` over ``loader`` (summed over ranks), in
    the run's arithmetic (a bf16 run is tested as it is trained)."""
    ctx, arith = ctx or DistContext(), arith or Arithmetic()
    net.eval()
    stats = torch.zeros(4, dtype=torch.float64, device=device)
    for x, y in loader:
        x = arith.inputs(x, device)
        y = y.to(device, non_blocking=True)
        with arith.context(device):
            logits, _ = net(x)
            loss = criterion(logits, y)
        n = y.size(0)
        stats[0] += loss.to(torch.float64) * n
        stats[1] += _topk_correct(logits, y, 1)
        stats[2] += _topk_correct(logits, y, 5)
        stats[3] += n
    loss_sum, c1, c5, count = _all_reduce(ctx, stats).tolist()
    if count == 0:
        raise MlonasError("the test set is empty")
    return loss_sum / count, 100.0 * c1 / count, 100.0 * c5 / count


# -- outputs -----------------------------------------------------------------------------


def _write_outputs(
    job: TrainJob,
    net: nn.Module,
    history: Sequence[dict[str, Any]],
    wall_time_s: float,
    device: torch.device,
    ctx: DistContext,
    run_fingerprint: str,
    diverged: Diverged | None = None,
) -> dict[str, Any]:
    """Write model.pt, history.csv and metrics.json (last); ``diverged`` marks an early end."""
    from mlonas.provenance import device_description, record

    out = Path(job.out_dir)
    metrics: dict[str, Any] = {
        "top1_error": None,
        "top5_error": None,
        "params_m": count_params_m(net),
        "epochs": int(job.settings.epochs),
        "wall_time_s": float(wall_time_s),
        "diverged": diverged is not None,
        "dataset": job.dataset,
        "method": job.method,
        "seed": job.seed,
        **job.extra,
    }
    if diverged is None:
        last = history[-1]
        metrics["top1_error"] = 100.0 - float(last["test_top1"])
        metrics["top5_error"] = 100.0 - float(last["test_top5"])
    else:
        metrics["epochs_completed"] = len(history)
        metrics["diverged_at"] = {
            "epoch": diverged.epoch,
            "step": diverged.step,
            "loss": diverged.what,
            "value": str(diverged.value),  # nan/inf are not JSON numbers
        }
    if ctx.is_main:
        metrics["provenance"] = record(
            stage=job.stage,
            inputs={"genotype": job.genotype_path, "split": job.split_path},
            params=job.settings.to_params(),
            seed=job.seed,
            device={**device_description(device), "count": ctx.world_size},
            wall_time_s=wall_time_s,
            world_size=ctx.world_size,
            fingerprint=run_fingerprint,
            tracked_params=job.tracked,
            # absent when none: `dvc metrics show` drops an empty list, and would differ
            **({"overrides": job.overrides} if job.overrides else {}),
        )
        atomic_torch_save(net.state_dict(), out / "model.pt")
        write_history(out / "history.csv", history, HISTORY_COLUMNS)
        atomic_write_json(out / "metrics.json", metrics)  # last: marks the run complete
    return metrics


# -- the loop ----------------------------------------------------------------------------


def fit(
    job: TrainJob,
    build_model: Callable[[], nn.Module],
    train_ds: Dataset[Any],
    test_ds: Dataset[Any],
    device: str = "auto",
    *,
    make_loader: LoaderFactory | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, Any] | None:
    """Train ``build_model()`` on ``train_ds``, test on ``test_ds``; write the outputs.

    Returns the metrics (on every rank; only rank 0's carry the provenance block, which
    hashes the inputs), or ``None`` when ``stop_after_epoch`` (a hook for tests and for
    splitting a long run over several allocations) stopped it after writing that epoch's
    checkpoint. ``make_loader`` defaults to :func:`mlonas.data.loaders.epoch_loader`.
    """
    t_start = time.perf_counter()
    ctx, dev = setup_distributed(device)
    try:
        with _hold_out_dir(job, ctx):
            trainer = _Trainer(job, ctx, dev, build_model, make_loader or _default_loader())
            run = trainer.resume(t_start)
            trainer.prepare(train_ds, test_ds, run)
            for epoch in range(run.done, run.epochs):
                try:
                    trainer.epoch(run, epoch)
                except Diverged as exc:
                    return trainer.finish_diverged(run, exc)
                if stop_after_epoch is not None and stop_after_epoch <= run.done < run.epochs:
                    return None
            return trainer.finish(run)
    finally:
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def _hold_out_dir(job: TrainJob, ctx: DistContext) -> Iterator[None]:
    """Hold ``job.out_dir`` against a second job (:func:`mlonas.io.hold_output_dir`).

    Only rank 0 takes the lock (it alone writes there; the ranks of one run must not
    lock one another out), and it tells every rank whether it got it, so a refused run
    stops on all ranks with the same line instead of leaving the others waiting in the
    first collective.
    """
    launcher_holds = os.environ.get(LAUNCHER_HOLDS_ENV) == str(Path(job.out_dir).resolve())
    with contextlib.ExitStack() as held:
        refused = ""
        if ctx.is_main and not launcher_holds:
            try:
                held.enter_context(hold_output_dir(job.out_dir))
            except MlonasError as exc:
                refused = str(exc)
        if ctx.distributed:
            said = [refused]
            dist.broadcast_object_list(said, src=0)
            refused = said[0]
        if refused:
            raise MlonasError(refused)
        yield


def _resident(ds: Any) -> bool:
    """Whether ``ds`` is a device-resident set that makes its own batches
    (:class:`mlonas.data.device.DeviceImages`: ``to``, ``subset``, ``epoch_batches``).

    Duck-typed rather than imported: the loop must not import ``mlonas.data`` (whose
    package imports the loaders that tests replace with stand-ins).
    """
    return callable(getattr(ds, "epoch_batches", None))


class _Trainer:
    """The model, optimizer, scheduler and data of one evaluation run, on one rank.

    What every run shares (epochs done, history, wall time, every rank's RNG, checkpoint
    files, progress lines) is the :class:`RunState`; this class holds what only
    training has, DDP included.
    """

    def __init__(
        self,
        job: TrainJob,
        ctx: DistContext,
        dev: torch.device,
        build_model: Callable[[], nn.Module],
        make_loader: LoaderFactory,
    ) -> None:
        s = job.settings
        self.job, self.ctx, self.dev = job, ctx, dev
        self.build_model, self.make_loader = build_model, make_loader
        self.batch = int(s.batch_size) // ctx.world_size
        if self.batch < 1:
            raise MlonasError(
                f"params: batch_size {s.batch_size} is smaller than the {ctx.world_size} processes"
            )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(s.label_smoothing))
        self.arith = Arithmetic.of(s)

    # -- building or resuming the model -------------------------------------------------

    def _build(self) -> None:
        # Same seed on every rank: identical initial weights (DDP would broadcast rank 0's
        # anyway) and a run that depends on nothing but the seed.
        s = self.job.settings
        torch.manual_seed(self.job.seed)
        self.net = self.build_model().to(self.dev, memory_format=self.arith.memory_format)
        self.optimizer = torch.optim.SGD(
            self.net.parameters(),
            lr=float(s.lr),
            momentum=float(s.momentum),
            weight_decay=float(s.weight_decay),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.job.lr_factor)

    def _restore(self, state: dict[str, Any]) -> None:
        self._build()
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def resume(self, t_start: float) -> RunState:
        """The run state, resumed from this run's checkpoint or fresh (clock from ``t_start``)."""
        job, ctx = self.job, self.ctx
        run = RunState(
            job.out_dir,
            run_definition(job, ctx.world_size),
            int(job.settings.epochs),
            device=self.dev,
            what="training",
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        run.start_clock(t_start)
        if not run.resume(self._restore, ("model", "optimizer", "scheduler")):
            self._build()
        if run.done < run.epochs and ctx.is_main:
            for name in OUTPUTS:  # outputs of an earlier, different run must not survive
                (Path(job.out_dir) / name).unlink(missing_ok=True)
        return run

    def prepare(self, train_ds: Dataset[Any], test_ds: Dataset[Any], run: RunState) -> None:
        """DDP wrapping, compilation, the (sharded) training set and the test loader.

        A device-resident set (:class:`mlonas.data.device.DeviceImages`) moves to the
        run's device here and makes its own batches; anything else goes through
        ``make_loader``.
        """
        ctx, seed, job = self.ctx, self.job.seed, self.job
        self.model: nn.Module | CompiledOrEager = self.net
        if ctx.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.dev.index] if self.dev.type == "cuda" else None
            )
        if job.settings.compile:
            where = f"{job.stage} {job.dataset}/{job.method} seed {job.seed}"
            self.model = CompiledOrEager(self.model, where)
        if _resident(train_ds):
            train_ds = train_ds.to(self.dev)  # type: ignore[attr-defined]
        if _resident(test_ds):
            test_ds = test_ds.to(self.dev)  # type: ignore[attr-defined]
        self.train_ds = train_ds
        self.sampler: torch.utils.data.DistributedSampler[Any] | None = None
        eval_ds: Dataset[Any] = test_ds
        n_local = len(train_ds)  # type: ignore[arg-type]
        if ctx.distributed:
            self.sampler = torch.utils.data.DistributedSampler(
                train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed
            )
            n_local = len(self.sampler)
            # Interleaved, unpadded shards: every test image is counted exactly once.
            shard = range(ctx.rank, len(test_ds), ctx.world_size)  # type: ignore[arg-type]
            resident = _resident(test_ds)
            eval_ds = test_ds.subset(shard) if resident else Subset(test_ds, shard)  # type: ignore[attr-defined]
        # A lone last sample would make BatchNorm fail on the 1x1 maps of tiny demo
        # networks; dropping just that one sample changes nothing else.
        self.drop_last = n_local % self.batch == 1 and n_local > 1
        self.workers = int(self.job.settings.num_workers)
        self.test_loader: Batches
        if _resident(eval_ds):
            self.test_loader = eval_ds.epoch_batches(  # type: ignore[attr-defined]
                self.batch, shuffle=False, seed=seed, epoch=0
            )
        else:
            self.test_loader = self.make_loader(
                eval_ds, self.batch, shuffle=False, seed=seed, epoch=0, num_workers=self.workers
            )

    # -- one epoch ----------------------------------------------------------------------

    def epoch(self, run: RunState, epoch: int) -> None:
        """Train and test one (0-based) epoch; record and checkpoint it (all ranks)."""
        net, epochs = self.net, run.epochs
        lr = float(self.scheduler.get_last_lr()[0])
        set_drop_path(net, float(self.job.settings.drop_path) * epoch / epochs)  # DARTS' ramp
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        order = {
            "shuffle": self.sampler is None,
            "seed": self.job.seed,
            "epoch": epoch,
            "drop_last": self.drop_last,
            "sampler": self.sampler,
        }
        loader: Batches
        if _resident(self.train_ds):
            loader = self.train_ds.epoch_batches(self.batch, **order)  # type: ignore[attr-defined]
        else:
            loader = self.make_loader(self.train_ds, self.batch, num_workers=self.workers, **order)
        train_loss, train_top1 = _train_epoch(
            self.job, self.ctx, self.model, loader, self.optimizer, self.criterion, self.dev,
            epoch, self.arith,
        )  # fmt: skip
        self.scheduler.step()
        if self.ctx.distributed:  # evaluate (and later save) rank 0's BatchNorm statistics
            for buf in net.buffers():
                dist.broadcast(buf, 0)
        test_loss, test_top1, test_top5 = evaluate(
            net, self.test_loader, self.criterion, self.dev, self.ctx, self.arith
        )
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_top1": train_top1,
            "test_loss": test_loss,
            "test_top1": test_top1,
            "test_top5": test_top5,
            "wall_time_s": run.lap(),
        }
        progress = {
            "lr": f"{lr:.4g}",
            "train_loss": f"{train_loss:.4f}",
            "train_top1": f"{train_top1:.2f}",
            "test_loss": f"{test_loss:.4f}",
            "test_top1": f"{test_top1:.2f}",
        }
        run.end_epoch(
            row,
            progress,
            model=net.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
        )

    # -- the end ------------------------------------------------------------------------

    def finish(self, run: RunState) -> dict[str, Any]:
        # The training time up to the last checkpoint, so a rewrite from a finished
        # checkpoint reports the same number as the run that produced it.
        wall = float(run.history[-1]["wall_time_s"])
        metrics = _write_outputs(
            self.job, self.net, run.history, wall, self.dev, self.ctx, run.checkpointer.fingerprint
        )
        if self.ctx.distributed:
            dist.barrier()  # no rank reports success before rank 0 has written the outputs
        return metrics

    def finish_diverged(self, run: RunState, exc: Diverged) -> dict[str, Any]:
        """Record a diverged run (see the module docstring) and say so in one line.

        Every rank gets here at the same step (the loss is all-reduced before the check),
        so the collectives inside stay matched; only rank 0 writes.
        """
        job, history = self.job, run.history
        metrics = _write_outputs(
            job, self.net, history, run.lap(), self.dev, self.ctx,
            run.checkpointer.fingerprint, exc,
        )  # fmt: skip
        if self.ctx.distributed:
            dist.barrier()
        run.say(
            f"{job.stage} {job.dataset}/{job.method} seed {job.seed} diverged at epoch"
            f" {exc.epoch} step {exc.step} (non-finite {exc.what}: {exc.value}); wrote"
            f' {job.out_dir} marked "diverged": true ({len(history)} epochs completed)',
            logging.WARNING,
        )
        return metrics


def train_cell(
    job: TrainJob,
    network: Callable[..., nn.Module],
    num_classes: int,
    train_ds: Dataset[Any],
    test_ds: Dataset[Any],
    device: str = "auto",
    make_loader: LoaderFactory | None = None,
) -> dict[str, Any]:
    """Train ``job.genotype`` as ``network(C, classes, layers, auxiliary, genotype,
    pool_bn=...)``; ``make_loader`` as in :func:`fit` (ImageNet's device decoding passes
    its own)."""
    s = job.settings
    build = partial(
        network,
        int(s.init_channels),
        num_classes,
        int(s.layers),
        float(s.auxiliary_weight) > 0,
        job.genotype,
        pool_bn=bool(s.pool_bn),
    )
    metrics = fit(job, build, train_ds, test_ds, device, make_loader=make_loader)
    assert metrics is not None  # only a stop_after_epoch hook returns early
    return metrics
