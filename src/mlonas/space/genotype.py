"""Genotypes: the discrete cells a search exports and an evaluation network is built from.

A genotype is stored as JSON (never ``eval``-ed Python, never pickled), in the same shape
as the official repositories publish their cells: for each of the ``steps`` intermediate
nodes two edges ``[operation, input]`` where inputs 0 and 1 are the two previous cells'
outputs and 2.. are earlier intermediate nodes, plus the list of nodes concatenated into
the cell output.

Derivation works on NumPy float64 arrays (a search's torch tensors are converted first),
so the export stage and the audit, which derive cells from ``alphas.json``, do not pay
the seconds of a torch import per job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlonas.artifacts import validate_artifact
from mlonas.errors import MlonasError
from mlonas.io import atomic_write_json, read_json

# The eight candidate operations of the DARTS search space (Liu et al. 2019, section 3),
# in the official codes' order; mlonas.space.ops builds them.
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# MSR-DARTS' four candidate ops (mtaecchhi/msrdarts genotypes.py:7-12), in its order: also
# the tie order of its derivation. A subset of PRIMITIVES, so its genotypes validate.
PRIMITIVES_SPECTRAL: tuple[str, ...] = (
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

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
        """Validate and build; every problem is reported as one line naming ``where``.

        The shape (mlonas/schemas/genotype.schema.json) first, then what a schema cannot
        say: known operations, inputs that are earlier nodes, nodes that match.
        """
        validate_artifact(data, "genotype", where)
        if "genotype" in data:  # exported files wrap it with metadata
            data = data["genotype"]
        cells: dict[str, tuple[Edge, ...]] = {}
        for kind in ("normal", "reduce"):
            edges = data[kind]
            if len(edges) % 2:
                raise MlonasError(f"{where}: {kind} must be a non-empty list of edge pairs")
            parsed = []
            for k, (op, src) in enumerate(edges):
                node = k // 2
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
            for j, i in enumerate(c):
                # Nodes 0 and 1 are the cell's inputs, not its output: in a reduction cell
                # they are still at the input resolution, so concatenating them would crash
                # the network's first forward pass instead of failing here, at load time.
                if not 2 <= i < steps + 2:
                    raise MlonasError(
                        f"{where}: {kind}[{j}] is {i!r}, not an intermediate node of the"
                        f" {steps}-node cell (2..{steps + 1}; 0 and 1 are the cell's inputs)"
                    )
            concats[kind] = tuple(c)
        return cls(
            cells["normal"], concats["normal_concat"], cells["reduce"], concats["reduce_concat"]
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Genotype:
        """A genotype file: bare, or an exported cell (the genotype under ``genotype``)."""
        return cls.from_dict(read_json(path, "genotype file"), where=str(path))


def num_edges(steps: int) -> int:
    """Edges of a cell with ``steps`` intermediate nodes (node i has i + 2 inputs)."""
    return sum(i + 2 for i in range(steps))


def _f64(x: Any) -> np.ndarray:
    """A float64 NumPy copy of an array or a (possibly grad-requiring) torch tensor."""
    if hasattr(x, "detach"):  # torch, without importing it here
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=np.float64)


def softmax(x: Any) -> Any:
    """Softmax over the last axis. A torch tensor's is taken by torch in its own dtype (the
    search's float32, as the official codes derive their cells); an array's (a record's
    float64) as exp(x - max) / sum, as torch.softmax computes it."""
    if hasattr(x, "softmax"):
        return x.detach().softmax(dim=-1)
    x = _f64(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def node_softmax(beta: Any, steps: int) -> np.ndarray:
    """Softmax of per-edge weights over the edges into each node (PC-DARTS' edge
    normalization: the edges into a node compete, edges into different nodes do not).
    The supernet computes the same with torch ops, differentiably
    (:meth:`mlonas.space.supernet.Network._edge_weights`; a test checks they agree)."""
    beta = _f64(beta)
    parts, start = [], 0
    for node in range(steps):
        parts.append(softmax(beta[start : start + node + 2]))  # float64: beta is _f64
        start += node + 2
    return np.concatenate(parts)


DERIVATIONS = ("darts", "pdarts")
# A record-level rule (alphas.json's ``derivation``): DARTS' rule on -mean stable rank
MIN_STABLE_RANK = "min_stable_rank"


def derive_cell(
    weights: Any,
    steps: int,
    edge_ops: Sequence[Sequence[str]] | None = None,
    edge_weights: Any | None = None,
    max_skip: int | None = None,
    rule: str = "darts",
) -> tuple[Edge, ...]:
    """DARTS derivation (Liu et al. 2019, section 2.4) for one cell.

    ``weights`` is ``[num_edges, ops per edge]`` of softmax-ed architecture weights and
    ``edge_ops`` names each edge's ops (default: all eight primitives on every edge; a
    P-DARTS stage keeps fewer). For each intermediate node the two incoming edges with the
    largest non-``none`` weight are kept, and on each the strongest non-``none`` operation.
    ``edge_weights`` (PC-DARTS' normalised betas) multiply the op weights first.
    ``max_skip`` (P-DARTS): while the cell has more skip-connects, the weakest chosen one
    (ties: the lowest edge index) is removed from the candidates and the cell derived again.

    ``rule`` is how the official codes break exact ties and order a node's two edges:
    ``darts`` (DARTS, PC-DARTS, DARTS-: ``Network.genotype()``) lists the stronger edge
    first and breaks ties towards the lower index; ``pdarts`` (P-DARTS' ``parse_network``
    after its ``get_min_k_no_zero`` / ``sorted`` selections) lists the two edges by input
    index and breaks ties towards the higher index. Both are checked against the official
    codes' fixtures in ``tests/test_parity.py``.
    """
    if rule not in DERIVATIONS:
        raise ValueError(f"unknown derivation rule {rule!r} (have: {', '.join(DERIVATIONS)})")
    n_edges = num_edges(steps)
    ops = [list(o) for o in (edge_ops or [PRIMITIVES] * n_edges)]
    w = _f64(weights)
    if w.ndim != 2 or w.shape[0] != n_edges or len(ops) != n_edges:
        raise ValueError(f"weights must have {n_edges} rows, got {list(w.shape)}")
    if any(len(o) != w.shape[1] for o in ops):
        raise ValueError(f"each edge needs {w.shape[1]} op names")
    if edge_weights is not None:
        w = w * _f64(edge_weights)[:, None]
    for e, names in enumerate(ops):  # `none` is never chosen
        for k, name in enumerate(names):
            if name == "none":
                w[e, k] = float("-inf")
    while True:
        cell = _derive(w, steps, ops, rule)
        skips = [
            (float(w[e, ops[e].index("skip_connect")]), e)
            for e in cell
            if cell[e][0] == "skip_connect"
        ]
        if max_skip is None or len(skips) <= max_skip:
            return tuple(cell.values())
        _, weakest = min(skips)
        w[weakest, ops[weakest].index("skip_connect")] = float("-inf")


def _best_op(row: np.ndarray, rule: str) -> int:
    """Index of the strongest op; ties: lowest index (darts) or highest (pdarts)."""
    if rule == "darts":
        return int(np.argmax(row))
    best = float(row.max())
    return max(k for k in range(row.size) if float(row[k]) == best)


def _derive(w: np.ndarray, steps: int, ops: list[list[str]], rule: str) -> dict[int, Edge]:
    """``{edge index: (op, input)}``; insertion order is the genotype's order."""
    cell: dict[int, Edge] = {}
    start = 0
    for node in range(steps):
        n_in = node + 2
        strength = [float(w[start + j].max()) for j in range(n_in)]
        if rule == "darts":  # strongest first, ties to the lower index
            chosen = sorted(range(n_in), key=lambda j: (-strength[j], j))[:2]
        else:  # the two strongest, ties to the higher index, listed by input index
            chosen = sorted(sorted(range(n_in), key=lambda j: (strength[j], j))[-2:])
        for j in chosen:
            e = start + j
            if strength[j] == float("-inf"):
                raise ValueError(f"node {node} has fewer than two edges with a candidate op")
            cell[e] = (ops[e][_best_op(w[e], rule)], j)
        start += n_in
    return cell


def derive_genotype(
    alpha_normal: Any,
    alpha_reduce: Any,
    steps: int,
    multiplier: int,
    *,
    edge_ops_normal: Sequence[Sequence[str]] | None = None,
    edge_ops_reduce: Sequence[Sequence[str]] | None = None,
    edge_weights_normal: Any | None = None,
    edge_weights_reduce: Any | None = None,
    max_skip_normal: int | None = None,
    rule: str = "darts",
) -> Genotype:
    """Genotype from raw architecture parameters (softmax over each edge's ops taken here);
    ``rule``: the base's derivation (:func:`derive_cell`)."""
    return _genotype(
        derive_cell(
            softmax(alpha_normal),
            steps,
            edge_ops_normal,
            edge_weights_normal,
            max_skip_normal,
            rule,
        ),
        derive_cell(softmax(alpha_reduce), steps, edge_ops_reduce, edge_weights_reduce, rule=rule),
        steps,
        multiplier,
    )


def _genotype(normal: Any, reduce: Any, steps: int, multiplier: int) -> Genotype:
    """Both derived cells, each concatenating its last ``multiplier`` nodes."""
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


def derive_min_stable_rank(
    srank_normal: Any,
    srank_reduce: Any,
    steps: int,
    multiplier: int,
    *,
    edge_ops_normal: Sequence[Sequence[str]] | None = None,
    edge_ops_reduce: Sequence[Sequence[str]] | None = None,
) -> Genotype:
    """MSR-DARTS' derivation (model_search.py:173-220 of mtaecchhi/msrdarts) from the mean
    stable ranks ``[edges, ops]`` of each cell type: per node the two edges whose smallest
    stable rank is smallest (stable sort: ties to the lower input, that edge listed first),
    on each the op of smallest stable rank (the first one on ties).

    That is DARTS' rule (:func:`derive_cell`, ``rule="darts"``) on the *raw* ``-srank``.
    Not on a softmax of each row, as :func:`derive_genotype` takes: a row softmax
    changes which edges of a node win (the edges are compared across rows). The ops of
    every edge default to :data:`PRIMITIVES_SPECTRAL`."""
    default = [PRIMITIVES_SPECTRAL] * num_edges(steps)
    return _genotype(
        derive_cell(-_f64(srank_normal), steps, edge_ops_normal or default, rule="darts"),
        derive_cell(-_f64(srank_reduce), steps, edge_ops_reduce or default, rule="darts"),
        steps,
        multiplier,
    )


def genotype_from_alphas(record: Any, name: str | None = None, where: str = "alphas") -> Genotype:
    """Derive the genotype of architecture ``name`` from a search's ``alphas.json`` record.

    The record carries everything derivation needs (each edge's candidate ops, PC-DARTS'
    betas, P-DARTS' skip limit), so export does not need to know which base produced it.
    ``name`` defaults to the architecture the search selected.
    """
    try:
        arch = record["architectures"][name or record["selected"]]
        steps, multiplier = int(arch["steps"]), int(arch["multiplier"])
        # records written before the P-DARTS rule existed carry no key: DARTS' rule
        rule = arch.get("derivation", "darts")
        # MSR-DARTS learns no alphas: its record holds the mean stable ranks instead
        keys = (
            ("srank_normal", "srank_reduce")
            if rule == MIN_STABLE_RANK
            else ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")
        )
        tensors = {k: np.asarray(arch[k], dtype=np.float64) for k in keys if k in arch}
        edge_ops = {k: arch.get(f"edge_ops_{k}") for k in ("normal", "reduce")}
        max_skip = arch.get("max_skip_normal")
        a_n, a_r = tensors[keys[0]], tensors[keys[1]]
    except (KeyError, TypeError, ValueError) as exc:
        raise MlonasError(
            f"{where}: malformed alphas record ({type(exc).__name__}: {exc})"
        ) from None
    for ops in edge_ops.values():
        unknown = [p for o in (ops or []) for p in o if p not in PRIMITIVES]
        if unknown:
            raise MlonasError(f"{where}: unknown operation {unknown[0]!r}")
    arch_key = f"architectures.{name or record['selected']}"
    # The cell's output concatenates its last `multiplier` intermediate nodes: more than
    # `steps` would take in the cell inputs (node 1, or "node -1", a crash in the figure).
    if steps < 1 or not 1 <= multiplier <= steps:
        raise MlonasError(
            f"{where}: {arch_key}.multiplier is {multiplier}, must be in 1..steps ({steps})"
        )
    n = num_edges(steps)
    if a_n.ndim != 2 or a_n.shape[0] != n or a_r.ndim != 2 or a_r.shape[0] != n:
        raise MlonasError(f"{where}: alphas must have {n} rows for {steps} steps")
    # A diverged search's NaN/inf weights make every comparison false, which derivation
    # would silently turn into an all-max-pool cell (the first candidate op) and exit 0.
    for key, tensor in tensors.items():
        if not bool(np.isfinite(tensor).all()):
            bad = tensor[~np.isfinite(tensor)][0].item()
            raise MlonasError(
                f"{where}: {arch_key}.{key} holds non-finite values ({bad}): the search"
                " diverged; its cell cannot be derived"
            )
    betas = {
        k: node_softmax(tensors[f"beta_{k}"], steps) if f"beta_{k}" in tensors else None
        for k in ("normal", "reduce")
    }
    try:
        if rule == MIN_STABLE_RANK:
            return derive_min_stable_rank(
                a_n,
                a_r,
                steps,
                multiplier,
                edge_ops_normal=edge_ops["normal"],
                edge_ops_reduce=edge_ops["reduce"],
            )
        return derive_genotype(
            a_n,
            a_r,
            steps,
            multiplier,
            edge_ops_normal=edge_ops["normal"],
            edge_ops_reduce=edge_ops["reduce"],
            edge_weights_normal=betas["normal"],
            edge_weights_reduce=betas["reduce"],
            max_skip_normal=max_skip,
            rule=rule,
        )
    except ValueError as exc:
        raise MlonasError(f"{where}: {exc}") from None
