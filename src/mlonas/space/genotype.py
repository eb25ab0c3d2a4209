"""Genotypes: the discrete cells a search exports and an evaluation network is built from.

A genotype is stored as JSON (never ``eval``-ed Python, never pickled), in the same shape
as the official repositories publish their cells: for each of the ``steps`` intermediate
nodes two edges ``[operation, input]`` where inputs 0 and 1 are the two previous cells'
outputs and 2.. are earlier intermediate nodes, plus the list of nodes concatenated into
the cell output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mlonas.errors import MlonasError
from mlonas.io import atomic_write_json, read_json
from mlonas.space.ops import PRIMITIVES

Edge = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "genotype") -> Genotype:
        """Validate and build; every problem is reported as one line naming ``where``."""
        if not isinstance(data, dict):
            raise MlonasError(f"{where}: expected an object with normal/reduce cells")
        missing = {"normal", "normal_concat", "reduce", "reduce_concat"} - data.keys()
        if missing:
            raise MlonasError(f"{where}: missing key(s) {', '.join(sorted(missing))}")
        cells: dict[str, tuple[Edge, ...]] = {}
        for kind in ("normal", "reduce"):
            edges = data[kind]
            if not isinstance(edges, list) or not edges or len(edges) % 2:
                raise MlonasError(f"{where}: {kind} must be a non-empty list of edge pairs")
            parsed = []
            for k, edge in enumerate(edges):
                node = k // 2
                if (
                    not isinstance(edge, list | tuple)
                    or len(edge) != 2
                    or not isinstance(edge[0], str)
                    or not isinstance(edge[1], int)
                    or isinstance(edge[1], bool)
                ):
                    raise MlonasError(f"{where}: {kind}[{k}] must be [operation, input index]")
                op, src = edge
                if op not in PRIMITIVES or op == "none":
                    raise MlonasError(
                        f"{where}: {kind}[{k}] names unknown operation {op!r}"
                        f" (known: {', '.join(PRIMITIVES[1:])})"
                    )
                if not 0 <= src < node + 2:
                    raise MlonasError(
                        f"{where}: {kind}[{k}] input {src} is not an earlier node"
                        f" of node {node + 2}"
                    )
                parsed.append((op, src))
            cells[kind] = tuple(parsed)
        if len(cells["normal"]) != len(cells["reduce"]):
            raise MlonasError(f"{where}: normal and reduce cells have different numbers of nodes")
        steps = len(cells["normal"]) // 2
        concats: dict[str, tuple[int, ...]] = {}
        for kind in ("normal_concat", "reduce_concat"):
            c = data[kind]
            if (
                not isinstance(c, list)
                or not c
                or not all(isinstance(i, int) and 0 <= i < steps + 2 for i in c)
            ):
                raise MlonasError(f"{where}: {kind} must list node indices in 0..{steps + 1}")
            concats[kind] = tuple(c)
        return cls(
            cells["normal"], concats["normal_concat"], cells["reduce"], concats["reduce_concat"]
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Genotype:
        data = read_json(path, "genotype file")
        if isinstance(data, dict) and "genotype" in data:  # exported files wrap it with metadata
            data = data["genotype"]
        return cls.from_dict(data, where=f"genotype file {path}")


def num_edges(steps: int) -> int:
    """Edges of a cell with ``steps`` intermediate nodes (node i has i + 2 inputs)."""
    return sum(i + 2 for i in range(steps))


def derive_cell(
    weights: torch.Tensor,
    steps: int,
    primitives: Sequence[str] = PRIMITIVES,
    edge_weights: torch.Tensor | None = None,
) -> tuple[Edge, ...]:
    """DARTS derivation (Liu et al. 2019, section 2.4) for one cell.

    ``weights`` is ``[num_edges, num_ops]`` of softmax-ed architecture weights. For each
    intermediate node the two incoming edges with the largest non-``none`` weight are kept,
    and on each the strongest non-``none`` operation. ``edge_weights`` (one per edge, e.g.
    PC-DARTS' normalised beta) multiply the operation weights before ranking edges. Ties
    break towards the lower index, so derivation is deterministic.
    """
    if (
        weights.dim() != 2
        or weights.size(0) != num_edges(steps)
        or weights.size(1) != len(primitives)
    ):
        raise ValueError(
            f"weights must be [{num_edges(steps)}, {len(primitives)}], got {list(weights.shape)}"
        )
    w = weights.detach().to(torch.float64).cpu()
    if edge_weights is not None:
        w = w * edge_weights.detach().to(torch.float64).cpu().unsqueeze(1)
    ops = list(primitives)
    keep = [k for k, name in enumerate(ops) if name != "none"]
    cell: list[Edge] = []
    start = 0
    for node in range(steps):
        n_in = node + 2
        block = w[start : start + n_in][:, keep]
        strength = [float(block[j].max()) for j in range(n_in)]
        # Stable sort on -strength: equal strengths keep input order.
        chosen = sorted(range(n_in), key=lambda j: -strength[j])[:2]
        for j in sorted(chosen, key=lambda j: (-strength[j], j)):
            best = keep[int(torch.argmax(block[j]))]
            cell.append((ops[best], j))
        start += n_in
    return tuple(cell)


def derive_genotype(
    alpha_normal: torch.Tensor,
    alpha_reduce: torch.Tensor,
    steps: int,
    multiplier: int,
    primitives: Sequence[str] = PRIMITIVES,
    beta_normal: torch.Tensor | None = None,
    beta_reduce: torch.Tensor | None = None,
) -> Genotype:
    """Genotype from raw architecture parameters (softmax over ops taken here)."""
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(
        normal=derive_cell(torch.softmax(alpha_normal, dim=-1), steps, primitives, beta_normal),
        normal_concat=concat,
        reduce=derive_cell(torch.softmax(alpha_reduce, dim=-1), steps, primitives, beta_reduce),
        reduce_concat=concat,
    )


DERIVATIONS = ("darts",)


def genotype_from_alphas(record: Any, name: str | None = None, where: str = "alphas") -> Genotype:
    """Derive the genotype of architecture ``name`` from a search's ``alphas.json`` record.

    The record says which derivation rule its base uses, so export does not need to know
    which base produced it. ``name`` defaults to the architecture the search selected.
    """
    try:
        derivation = record["derivation"]
        arch = record["architectures"][name or record["selected"]]
        primitives = tuple(arch["primitives"])
        steps, multiplier = int(arch["steps"]), int(arch["multiplier"])
        a_n = torch.tensor(arch["alpha_normal"], dtype=torch.float64)
        a_r = torch.tensor(arch["alpha_reduce"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise MlonasError(
            f"{where}: malformed alphas record ({type(exc).__name__}: {exc})"
        ) from None
    if derivation not in DERIVATIONS:
        raise MlonasError(f"{where}: unknown derivation rule {derivation!r}")
    unknown = [p for p in primitives if p not in PRIMITIVES]
    if unknown:
        raise MlonasError(f"{where}: unknown operation {unknown[0]!r}")
    shape = (num_edges(steps), len(primitives))
    if tuple(a_n.shape) != shape or tuple(a_r.shape) != shape:
        raise MlonasError(f"{where}: alphas must be {list(shape)} for {steps} steps")
    return derive_genotype(a_n, a_r, steps, multiplier, primitives)
