"""Bases of the DARTS family: what differs between them is the supernet, the schedule
and the derivation rule — nothing else (DESIGN.md, "Methods are compositions").

A base turns the method's search settings into a :class:`SupernetSpec`, says in which
epochs the architecture is updated, and records how its genotype is derived. Schemes
(plain, LeaSE, SGL) receive the base and never branch on which one it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlonas.errors import MlonasError
from mlonas.space.supernet import Supernet, SupernetSpec


@dataclass(frozen=True)
class Base:
    """DARTS (Liu et al., ICLR 2019): all 8 ops on every edge, alphas updated every epoch."""

    name: str = "darts"
    derivation: str = "darts"

    def spec(self, settings: dict[str, Any], num_classes: int) -> SupernetSpec:
        return SupernetSpec(
            init_channels=settings["init_channels"],
            num_classes=num_classes,
            layers=settings["layers"],
            steps=settings["steps"],
            multiplier=settings["multiplier"],
            stem_multiplier=settings["stem_multiplier"],
        )

    def build(self, settings: dict[str, Any], num_classes: int) -> Supernet:
        return Supernet(self.spec(settings, num_classes))

    def updates_architecture(self, epoch: int, settings: dict[str, Any]) -> bool:
        """Whether the architecture takes steps in ``epoch`` (warm-up bases say no early on)."""
        return epoch >= settings.get("warmup_epochs", 0)


BASES: dict[str, Base] = {"darts": Base()}

ORDERS = ("first", "second")


def get_base(name: str) -> Base:
    try:
        return BASES[name]
    except KeyError:
        raise MlonasError(f"unknown search base {name!r} (have: {', '.join(BASES)})") from None


def hypergradient_mode(order: str, settings: dict[str, Any]) -> str:
    """params.yaml's ``order`` -> a mode of :mod:`mlonas.mlo`.

    First order is ``first_order``; second order unrolls one virtual step and takes the
    mixed second derivative as ``search.unrolled_mode`` says: ``finite_difference`` (the
    papers' algorithm, the default) or ``exact`` (autograd, about 2-3x the memory).
    """
    if order not in ORDERS:
        raise MlonasError(f"unknown order {order!r} (have: {', '.join(ORDERS)})")
    return "first_order" if order == "first" else settings.get("unrolled_mode", "finite_difference")
