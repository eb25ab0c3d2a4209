"""Typed, frozen settings: params.yaml's sections as the code reads them.

The optimizers, schedules and schemes read their settings as attributes of these classes
(``s.fd_eps``, ``o.audience_lr``), never as dict keys, so a misspelt name is an
``AttributeError`` where it is written rather than a ``KeyError`` (or, with ``.get``, a
silently used default) deep inside a run. They are built once per use from the validated
params by :meth:`Settings.from_params`, which refuses a key the class does not have and
a key the params lack, with one line naming it.

Defaults live in params.yaml only. No field has a default value here (a test checks it):
where a base has no use for a setting (``stage_layers`` outside P-DARTS, ``warmup_epochs``
in DARTS), params.yaml's shared section states the neutral value (``null``, ``0``) and a
method overrides it. Lists become tuples, so the objects are hashable as well as frozen.

:meth:`Settings.to_params` gives the values back in params.yaml's spelling (JSON-able),
which is what provenance and the checkpoint fingerprint record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self

from mlonas.errors import MlonasError


def _frozen(value: Any) -> Any:
    """Lists (YAML sequences) as tuples, recursively: a frozen dataclass holding a list
    could still be changed in place, and would not hash."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """Tuples back as lists: the value as params.yaml and JSON write it."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """A section of params.yaml, one field per key (``metadata["key"]`` where the params
    name is not a Python identifier, e.g. SGL's ``lambda``)."""

    @classmethod
    def keys(cls) -> dict[str, str]:
        """``{params key: field name}``."""
        return {f.metadata.get("key", f.name): f.name for f in fields(cls)}

    @classmethod
    def from_params(cls, values: Mapping[str, Any], where: str, section: str) -> Self:
        """Build from the params mapping ``values`` of ``section`` (``search``,
        ``methods.pcdarts.search`` ...); an unknown or a missing key is a one-line
        :class:`MlonasError` naming it, reported as being in ``where`` (the file)."""
        keys = cls.keys()
        unknown = [k for k in values if k not in keys]
        if unknown:
            raise MlonasError(f"{where}: unknown key {section}.{unknown[0]}")
        missing = [k for k in keys if k not in values]
        if missing:
            raise MlonasError(f"{where}: {section}: {missing[0]} is required")
        return cls(**{keys[k]: _frozen(v) for k, v in values.items()})

    def to_params(self) -> dict[str, Any]:
        """The values under their params.yaml names, lists as lists (JSON-able)."""
        return {k: _plain(getattr(self, name)) for k, name in self.keys().items()}


@dataclass(frozen=True, slots=True)
class SearchSettings(Settings):
    """params.yaml ``search`` with a method's ``search`` overrides merged over it."""

    epochs: int  # per stage (P-DARTS); the whole search otherwise
    batch_size: int
    init_channels: int
    layers: int
    steps: int
    multiplier: int
    stem_multiplier: int
    lr: float
    lr_min: float
    momentum: float
    weight_decay: float
    grad_clip: float
    arch_lr: float
    arch_betas: tuple[float, float]
    arch_weight_decay: float
    arch_lr_schedule: str  # constant | confident (B-DARTS' CLR: Base.arch_confidence)
    confidence_power: int  # CLR's p in ((epoch + 1) / E) ** p
    confidence_scales: str  # lr (CLR's first order) | hypergradient (its second order)
    unrolled_mode: str  # finite_difference | exact (second order only)
    fd_eps: float
    scheduler_step_first: bool
    arch_bn_stats: str  # private | shared
    num_workers: int
    warmup_epochs: int  # per stage: epochs without architecture steps
    arch_grad_clip: float | None  # P-DARTS clips the hypergradient's norm; None: no clip
    partial_channels: int | None  # PC-DARTS' K
    stage_layers: tuple[int, ...] | None  # P-DARTS: per stage
    stage_ops: tuple[int, ...] | None
    stage_skip_dropout: tuple[float, ...] | None
    stage_partial_channels: tuple[int, ...] | None  # DrNAS: K per stage
    max_skip_normal: int | None  # P-DARTS' derivation rule; None: no limit
    en_layers: int | None  # B-DARTS: enhancement cells of the broad supernet
    objective: str  # classification | mae (MAE-NAS: masked reconstruction, no labels)
    mask_ratio: float | None  # mae: fraction of each image's patches masked
    patch_size: int | None  # mae: side of a masked patch, in pixels
    decoder: str | None  # mae: multiscale (every stage's output) | last (the final cell's)
    decoder_channels: int | None  # mae: the decoder's width
    norm_pix_loss: bool | None  # mae: per-patch normalized targets (MAE's option)
    # Half search space (an interpretation, mlonas.space.zeroshot): zero-shot pruning of
    # each edge's ops before the search; None = no pruning (and the prune_* keys unused)
    prune: str | None  # etenas (one round of ETENAS' pruner) | None
    prune_keep: int | None  # ops kept per edge (4 = half of DARTS' 8)
    prune_rankers: tuple[str, ...] | None  # training-free rankers summed (nngp_frob)
    prune_repeat: int | None  # weight draws averaged per op (ETENAS: 3)
    prune_batch_size: int | None  # scoring images per batch (ETENAS' README: 72)
    prune_batches: int | None  # batches per score (ETENAS' frob.json: 2)
    prune_channels: int | None  # C of the scoring supernet (ETENAS: 1)


@dataclass(frozen=True, slots=True)
class PlainOptions(Settings):
    """The plain (DARTS) scheme has no options: a method's ``options`` is ``{}``."""


@dataclass(frozen=True, slots=True)
class LeaseOptions(Settings):
    """params.yaml ``schemes.lease`` with a method's ``options`` merged over it."""

    gamma: float
    audience_blocks: tuple[int, int, int, int]
    audience_width: int  # channels of the first stage (ResNet: 64)
    audience_lr: float
    audience_lr_min: float
    audience_momentum: float
    audience_weight_decay: float
    explanation_direction: str  # ascent | descent
    explanation_eps: float
    explanation_init: float
    explanation_lr: float
    explanation_weight: float


@dataclass(frozen=True, slots=True)
class SglOptions(Settings):
    """params.yaml ``schemes.sgl`` with a method's ``options`` merged over it."""

    learners: int  # K
    lam: float = field(metadata={"key": "lambda"})  # weight of the pseudo-labeled losses
    select: str | int  # min_val_loss | max_val_acc | a 1-based learner number


@dataclass(frozen=True, slots=True)
class IlOptions(Settings):
    """params.yaml ``schemes.il`` with a method's ``options`` merged over it (interleaving
    learning, an interpretation: docs/il.md)."""

    models: int  # K: heads over K class groups, trained one after the other
    rounds: int  # R: rounds of K stages the hypergradient unrolls (the chain's truncation)
    groups: str  # contiguous: class group k = labels [k C / K, (k + 1) C / K)


@dataclass(frozen=True, slots=True)
class LbtOptions(Settings):
    """params.yaml ``schemes.lbt`` with a method's ``options`` merged over it (an
    interpretation of LBT: docs/lbt.md)."""

    gamma: float  # weight of the student's validation loss in the architecture objective
    lam: float = field(metadata={"key": "lambda"})  # weight of the pseudo-labeled loss
    student_blocks: tuple[int, int, int, int]
    student_width: int  # channels of the first stage (ResNet: 64)
    student_lr: float
    student_lr_min: float
    student_momentum: float
    student_weight_decay: float


SchemeOptions = PlainOptions | LeaseOptions | SglOptions | LbtOptions | IlOptions
SCHEME_OPTIONS: dict[str, type[SchemeOptions]] = {
    "plain": PlainOptions,
    "lease": LeaseOptions,
    "sgl": SglOptions,
    "il": IlOptions,
    "lbt": LbtOptions,
}


@dataclass(frozen=True, slots=True)
class EvalSettings(Settings):
    """What both evaluations (``eval.cifar``, ``eval.imagenet``) set, with a method's
    ``methods.<m>.eval.<kind>`` merged over it for that method's evaluations."""

    layers: int
    init_channels: int
    epochs: int
    batch_size: int  # global; split over the processes
    lr: float
    momentum: float
    weight_decay: float
    grad_clip: float
    drop_path: float
    auxiliary_weight: float
    label_smoothing: float
    num_workers: int
    precision: str  # bf16 (autocast) | fp32 (the papers' arithmetic)
    channels_last: bool
    compile: bool  # torch.compile, falling back to eager on a compile error
    pool_bn: bool  # max/avg pool followed by BatchNorm2d(C, affine=False), as DrNAS' ops


@dataclass(frozen=True, slots=True)
class CifarEvalSettings(EvalSettings):
    """params.yaml ``eval.cifar``: DARTS' cosine schedule, cutout, where batches are made."""

    lr_min: float
    scheduler_step_first: bool
    cutout: int
    loader: str  # device (resident uint8, torch-op augmentation) | workers (DataLoader)
    network: str  # darts (NetworkCIFAR) | broad (B-DARTS' NetworkBroad)
    en_layers: int | None  # broad: enhancement cells
    pool_time: int | None  # broad: stride-2 convolution cells


@dataclass(frozen=True, slots=True)
class ImagenetEvalSettings(EvalSettings):
    """params.yaml ``eval.imagenet``: warm-up then a linear or cosine decay, torchrun."""

    nproc: int
    lr_schedule: str  # linear | cosine
    warmup_epochs: int
    decode: str  # workers (PIL in DataLoader workers) | device (mlonas.data.imagenet_gpu)


EVAL_SETTINGS: dict[str, type[EvalSettings]] = {
    "cifar": CifarEvalSettings,
    "imagenet": ImagenetEvalSettings,
}
