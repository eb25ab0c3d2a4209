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

Epochs are numbered from 1 in everything a user sees (history, logs, errors).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from mlonas.checkpoint import Checkpointer, Diverged, check_finite
from mlonas.errors import MlonasError
from mlonas.io import (
    LAUNCHER_HOLDS_ENV,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    hold_output_dir,
    sha256_file,
)
from mlonas.runtime import cosine_lr, eta, resolve_device
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
CHECKPOINT_FORMAT = 1


# The contract of :func:`mlonas.data.loaders.epoch_loader` (tests pass their own).
LoaderFactory = Callable[..., DataLoader[Any]]


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


def _log(ctx: DistContext, message: str) -> None:
    if ctx.is_main:
        tqdm.write(message, file=sys.stderr)


# -- checkpoint --------------------------------------------------------------------------


_CKPT_KEYS = frozenset(
    {
        "format",
        "epoch",
        "model",
        "optimizer",
        "scheduler",
        "history",
        "rng",
        "cuda_rng",
        "wall_time_s",
    }
)


def _consistency(epochs: int, world_size: int) -> Callable[[dict[str, Any]], str | None]:
    """A validator for :meth:`Checkpointer.read`: is this a complete training checkpoint?"""

    def problem(ckpt: dict[str, Any]) -> str | None:
        if not ckpt.keys() >= _CKPT_KEYS:
            return "is not a mlonas training checkpoint"
        if ckpt["format"] != CHECKPOINT_FORMAT:
            return f"has format {ckpt['format']}"
        done = ckpt["epoch"]
        if (
            not isinstance(done, int)
            or not 1 <= done <= epochs
            or not isinstance(ckpt["history"], list)
            or len(ckpt["history"]) != done
            or not isinstance(ckpt["rng"], list)
            or len(ckpt["rng"]) != world_size
        ):
            return "is inconsistent"
        return None

    return problem


def _gather_rng(ctx: DistContext, device: torch.device) -> tuple[list[torch.Tensor], list[Any]]:
    """Every rank's torch RNG state (CPU, and CUDA where used), gathered on all ranks."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    if not ctx.distributed:
        return [cpu], [cuda]
    cpus: list[Any] = [None] * ctx.world_size
    cudas: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(cpus, cpu)
    dist.all_gather_object(cudas, cuda)
    return cpus, cudas


# -- one epoch ---------------------------------------------------------------------------


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    top = logits.topk(min(k, logits.size(1)), dim=1).indices
    return (top == target.unsqueeze(1)).any(dim=1).sum()


def _all_reduce(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _train_epoch(
    job: TrainJob,
    ctx: DistContext,
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    device: torch.device,
    epoch: int,
    show_progress: bool,
) -> tuple[float, float]:
    """Train one epoch; returns (mean objective, top-1 accuracy %) over all processes."""
    aux_weight = float(job.settings.auxiliary_weight)
    grad_clip = float(job.settings.grad_clip)
    model.train()
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}",
        leave=False,
        file=sys.stderr,
        unit="batch",
        disable=not show_progress,
    )
    for step, (x, y) in enumerate(bar):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
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
        if show_progress:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    loss_sum, correct, count = _all_reduce(ctx, stats).tolist()
    return loss_sum / max(count, 1.0), 100.0 * correct / max(count, 1.0)


@torch.no_grad()
def evaluate(
    net: nn.Module,
    loader: DataLoader[Any],
    criterion: nn.Module,
    device: torch.device,
    ctx: DistContext | None = None,
) -> tuple[float, float, float]:
    """(mean loss, top-1 %, top-5 %) of ``net`` over ``loader`` (summed over ranks)."""
    ctx = ctx or DistContext()
    net.eval()
    stats = torch.zeros(4, dtype=torch.float64, device=device)
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        logits, _ = net(x)
        n = y.size(0)
        stats[0] += criterion(logits, y).to(torch.float64) * n
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
    import pandas as pd

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
        frame = pd.DataFrame(list(history), columns=list(HISTORY_COLUMNS))
        atomic_write_text(out / "history.csv", frame.to_csv(index=False))
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
            return _fit(
                job,
                ctx,
                dev,
                build_model,
                train_ds,
                test_ds,
                make_loader or _default_loader(),
                stop_after_epoch,
                t_start,
            )
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


def _fit(
    job: TrainJob,
    ctx: DistContext,
    dev: torch.device,
    build_model: Callable[[], nn.Module],
    train_ds: Dataset[Any],
    test_ds: Dataset[Any],
    make_loader: LoaderFactory,
    stop_after_epoch: int | None,
    t_start: float,
) -> dict[str, Any] | None:
    s = job.settings
    epochs = int(s.epochs)
    out = Path(job.out_dir)
    checkpointer = Checkpointer(out, run_definition(job, ctx.world_size))
    ckpt_path = checkpointer.path
    batch = int(s.batch_size) // ctx.world_size
    if batch < 1:
        raise MlonasError(
            f"params: batch_size {s.batch_size} is smaller than the {ctx.world_size} processes"
        )

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        # Same seed on every rank: identical initial weights (DDP would broadcast rank 0's
        # anyway) and a run that depends on nothing but the seed.
        torch.manual_seed(job.seed)
        net = build_model().to(dev)
        opt = torch.optim.SGD(
            net.parameters(),
            lr=float(s.lr),
            momentum=float(s.momentum),
            weight_decay=float(s.weight_decay),
        )
        return net, opt, torch.optim.lr_scheduler.LambdaLR(opt, job.lr_factor)

    net, optimizer, scheduler = fresh()
    history: list[dict[str, Any]] = []
    start, prior_wall = 0, 0.0
    ckpt, why = checkpointer.read(_consistency(epochs, ctx.world_size))
    if why:
        _log(ctx, why)
    if ckpt is not None:
        try:
            net.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"][ctx.rank])
            if dev.type == "cuda" and ckpt["cuda_rng"][ctx.rank] is not None:
                torch.cuda.set_rng_state(ckpt["cuda_rng"][ctx.rank], dev)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            _log(
                ctx,
                f"checkpoint {ckpt_path} cannot be restored ({type(exc).__name__}:"
                f" {exc}); starting over",
            )
            net, optimizer, scheduler = fresh()
            ckpt = None
    if ckpt is not None:
        start = int(ckpt["epoch"])
        history = [dict(r) for r in ckpt["history"]]
        prior_wall = float(ckpt["wall_time_s"])
        if start < epochs:
            _log(ctx, f"resuming from epoch {start + 1} of {epochs} ({ckpt_path})")
        else:
            _log(ctx, f"all {epochs} epochs done in {ckpt_path}; writing the outputs")
    if ctx.distributed:
        # Every rank read the checkpoint (all of them have finished reading before rank 0
        # may replace it); they must agree, or the collectives below would mismatch.
        starts: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(starts, start)
        if len(set(starts)) > 1:
            raise MlonasError(
                f"ranks disagree on the checkpoint {ckpt_path} (epochs done: {starts});"
                " out_dir must be on a file system all processes share"
            )

    if start < epochs and ctx.is_main:
        for name in OUTPUTS:  # outputs of an earlier, different run must not survive
            (out / name).unlink(missing_ok=True)

    model: nn.Module = net
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    criterion = nn.CrossEntropyLoss(label_smoothing=float(s.label_smoothing))
    workers = int(s.num_workers)
    sampler: torch.utils.data.DistributedSampler[Any] | None = None
    eval_ds: Dataset[Any] = test_ds
    n_local = len(train_ds)  # type: ignore[arg-type]
    if ctx.distributed:
        sampler = torch.utils.data.DistributedSampler(
            train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=job.seed
        )
        n_local = len(sampler)
        # Interleaved, unpadded shards: every test image is counted exactly once.
        eval_ds = Subset(test_ds, range(ctx.rank, len(test_ds), ctx.world_size))  # type: ignore[arg-type]
    # A lone last sample would make BatchNorm fail on the 1x1 maps of tiny demo networks;
    # dropping just that one sample changes nothing else.
    drop_last = n_local % batch == 1 and n_local > 1
    test_loader = make_loader(
        eval_ds, batch, shuffle=False, seed=job.seed, epoch=0, num_workers=workers
    )
    show = ctx.is_main and sys.stderr.isatty()
    bar = tqdm(
        total=epochs,
        initial=start,
        unit="epoch",
        file=sys.stderr,
        disable=not show,
        desc=f"{job.stage} {job.dataset}/{job.method}/seed{job.seed}",
    )
    drop_path = float(s.drop_path)
    for epoch in range(start, epochs):
        lr = float(scheduler.get_last_lr()[0])
        set_drop_path(net, drop_path * epoch / epochs)  # DARTS' linear ramp
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = make_loader(
            train_ds,
            batch,
            shuffle=sampler is None,
            seed=job.seed,
            epoch=epoch,
            num_workers=workers,
            drop_last=drop_last,
            sampler=sampler,
        )
        try:
            train_loss, train_top1 = _train_epoch(
                job, ctx, model, loader, optimizer, criterion, dev, epoch, show
            )
        except Diverged as exc:
            bar.close()
            return _finish_diverged(
                job,
                ctx,
                net,
                history,
                prior_wall + time.perf_counter() - t_start,
                dev,
                checkpointer.fingerprint,
                exc,
            )
        scheduler.step()
        if ctx.distributed:  # evaluate (and later save) rank 0's BatchNorm statistics
            for buf in net.buffers():
                dist.broadcast(buf, 0)
        test_loss, test_top1, test_top5 = evaluate(net, test_loader, criterion, dev, ctx)
        wall = prior_wall + time.perf_counter() - t_start
        history.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": train_loss,
                "train_top1": train_top1,
                "test_loss": test_loss,
                "test_top1": test_top1,
                "test_top5": test_top5,
                "wall_time_s": wall,
            }
        )
        rng, cuda_rng = _gather_rng(ctx, dev)
        if ctx.is_main:
            checkpointer.save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch + 1,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "rng": rng,
                    "cuda_rng": cuda_rng,
                    "wall_time_s": wall,
                },
            )
        if ctx.distributed:
            dist.barrier()  # the checkpoint is on disk before any rank can stop or resume
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.3f}", test_err=f"{100 - test_top1:.2f}", lr=f"{lr:.2e}")
        if not show:
            _log(
                ctx,
                f"epoch {epoch + 1}/{epochs} lr {lr:.4g} train_loss {train_loss:.4f}"
                f" train_top1 {train_top1:.2f} test_loss {test_loss:.4f}"
                f" test_top1 {test_top1:.2f} ({wall:.0f}s, ETA {eta(wall, epoch + 1, epochs)})",
            )
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < epochs:
            bar.close()
            return None
    bar.close()
    # The training time up to the last checkpoint, so a rewrite from a finished checkpoint
    # reports the same number as the run that produced it.
    metrics = _write_outputs(
        job, net, history, float(history[-1]["wall_time_s"]), dev, ctx, checkpointer.fingerprint
    )
    if ctx.distributed:
        dist.barrier()  # no rank reports success before rank 0 has written the outputs
    return metrics


def _finish_diverged(
    job: TrainJob,
    ctx: DistContext,
    net: nn.Module,
    history: Sequence[dict[str, Any]],
    wall_time_s: float,
    dev: torch.device,
    run_fingerprint: str,
    exc: Diverged,
) -> dict[str, Any]:
    """Record a diverged run (see the module docstring) and say so in one line.

    Every rank gets here at the same step (the loss is all-reduced before the check), so
    the collectives inside stay matched; only rank 0 writes.
    """
    metrics = _write_outputs(job, net, history, wall_time_s, dev, ctx, run_fingerprint, exc)
    if ctx.distributed:
        dist.barrier()
    _log(
        ctx,
        f"mlonas: {job.stage} {job.dataset}/{job.method} seed {job.seed} diverged at epoch"
        f" {exc.epoch} step {exc.step} (non-finite {exc.what}: {exc.value}); wrote"
        f' {job.out_dir} marked "diverged": true ({len(history)} epochs completed)',
    )
    return metrics


def train_cell(
    job: TrainJob,
    network: Callable[..., nn.Module],
    num_classes: int,
    train_ds: Dataset[Any],
    test_ds: Dataset[Any],
    device: str = "auto",
) -> dict[str, Any]:
    """Train ``job.genotype`` as ``network(C, classes, layers, auxiliary, genotype)``."""
    s = job.settings
    build = partial(
        network,
        int(s.init_channels),
        num_classes,
        int(s.layers),
        float(s.auxiliary_weight) > 0,
        job.genotype,
    )
    metrics = fit(job, build, train_ds, test_ds, device)
    assert metrics is not None  # only a stop_after_epoch hook returns early
    return metrics
