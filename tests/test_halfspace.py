"""Half search space (an interpretation): ETENAS' zero-shot pruning before the search.

What is checked: a supernet built on the pruned ops mixes exactly as the full one with the
pruned alphas at -inf (the paper's masked softmax I(o)); the pruner is a function of its
seed and keeps prune_keep ops per edge, never ``none``; its importance is ETENAS' relative
shift and removes the lowest (ties: ETENAS' op order); the NNGP-Frobenius ranker against
NumPy; and the search job: pruned before the build, recorded, never re-pruned on resume.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_config import raw
from test_search import Killed, kill_after_first_save, search

from mlonas.config import PRUNABLE_OPS, Config, validate_params
from mlonas.errors import MlonasError
from mlonas.search.bases import BASES
from mlonas.space import zeroshot
from mlonas.space.genotype import PRIMITIVES, num_edges
from mlonas.space.supernet import Supernet, SupernetSpec
from mlonas.space.zeroshot import (
    ETENAS_ORDER,
    INF,
    etenas_prune,
    keep_ops,
    nngp_frobenius,
    op_importance,
    scoring_spec,
)

STEPS = 2
EDGES = num_edges(STEPS)


def _mask(seed: int) -> list[list[str]]:
    """4 random ops of DARTS' 7 (not none) per edge, in PRIMITIVES' order."""
    g = np.random.default_rng(seed)
    ops = [p for p in PRIMITIVES if p != "none"]
    return [[ops[k] for k in sorted(g.permutation(len(ops))[:4])] for _ in range(EDGES)]


@pytest.mark.parametrize("masked_value", [float("-inf"), -INF])
def test_a_pruned_supernet_mixes_as_the_full_one_with_masked_alphas(masked_value: float) -> None:
    """The paper's masked mixing sum_o I(o) exp(a_o) o(x) / sum_o' I(o') exp(a_o'), as a
    supernet built on the kept ops, against the full supernet with the others at -inf
    (or ETENAS' -1000): same logits, same gradients of the kept alphas, kept-op weights
    shared; the full supernet's masked alphas get no gradient."""
    torch.manual_seed(0)
    normal, reduce = _mask(1), _mask(2)
    size = {"init_channels": 4, "num_classes": 3, "layers": 3, "steps": STEPS, "multiplier": 2}
    full = Supernet(SupernetSpec(**size)).double().train()
    masks = {
        "edge_ops_normal": tuple(map(tuple, normal)),
        "edge_ops_reduce": tuple(map(tuple, reduce)),
    }
    pruned = Supernet(SupernetSpec(**size, **masks)).double().train()
    # the pruned net's weights are the full net's kept ops (ops.<k> renumbered by name)
    full_state = full.state_dict()
    state = {}
    for name in pruned.state_dict():
        if name.startswith("alpha_"):
            continue
        m = re.match(r"cells\.(\d+)\.edges\.(\d+)\.ops\.(\d+)\.(.*)", name)
        source = name
        if m:
            cell, edge, k, rest = int(m[1]), int(m[2]), int(m[3]), m[4]
            ops = reduce if pruned.cells[cell].reduction else normal
            source = f"cells.{cell}.edges.{edge}.ops.{PRIMITIVES.index(ops[edge][k])}.{rest}"
        state[name] = full_state[source]
    missing = pruned.load_state_dict(state, strict=False).missing_keys
    assert set(missing) == {"alpha_normal", "alpha_reduce"}
    kept = {}
    with torch.no_grad():
        for r, ops in ((False, normal), (True, reduce)):
            name = "alpha_reduce" if r else "alpha_normal"
            a_full = torch.full((EDGES, len(PRIMITIVES)), masked_value, dtype=torch.float64)
            idx = torch.tensor([[PRIMITIVES.index(o) for o in row] for row in ops])
            a_pruned = torch.randn(EDGES, 4, dtype=torch.float64)
            a_full.scatter_(1, idx, a_pruned)
            getattr(full, name).copy_(a_full)
            getattr(pruned, name).copy_(a_pruned)
            kept[r] = idx
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out_full, out_pruned = full(x), pruned(x)
    torch.testing.assert_close(out_full, out_pruned, rtol=1e-12, atol=1e-12)
    loss = torch.nn.functional.cross_entropy
    loss(out_full, y).backward()
    loss(out_pruned, y).backward()
    for r, name in ((False, "alpha_normal"), (True, "alpha_reduce")):
        g_full = getattr(full, name).grad
        assert g_full is not None and torch.isfinite(g_full).all()
        g_kept = g_full.gather(1, kept[r])
        torch.testing.assert_close(g_kept, getattr(pruned, name).grad, rtol=1e-10, atol=1e-14)
        assert g_kept.abs().sum() > 0
        dropped = torch.ones_like(g_full, dtype=torch.bool).scatter_(1, kept[r], False)
        assert (g_full[dropped] == 0).all()


def _prune(images: torch.Tensor, seed: int, primitives=PRIMITIVES, **kw) -> zeroshot.PruneResult:
    # one-node cells (2 edges): 2 x 2 x 7 pruned scorings per draw, seconds on a CPU
    args = dict(
        primitives=primitives, steps=1, multiplier=1, num_classes=3, keep=4,
        rankers=["nngp_frob"], repeat=1, batch_size=8, batches=2, channels=1, seed=seed,
        device=torch.device("cpu"),
    )  # fmt: skip
    return etenas_prune(images, **{**args, **kw})


def test_the_pruner_is_a_function_of_its_seed_and_keeps_prune_keep_ops() -> None:
    images = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    rng = torch.get_rng_state()
    a, b = _prune(images, seed=0), _prune(images, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    assert a == b
    for ops, scores in ((a.edge_ops_normal, a.scores_normal), (a.edge_ops_reduce, a.scores_reduce)):
        assert len(ops) == num_edges(1)
        for row, score in zip(ops, scores, strict=True):
            assert len(row) == 4 and "none" not in row
            assert row == [p for p in PRIMITIVES if p in row]  # the base's order
            assert score[PRIMITIVES.index("none")] is None
            values = {p: s for p, s in zip(PRIMITIVES, score, strict=True) if p != "none"}
            assert all(np.isfinite(v) for v in values.values())
            # the kept ops are the four most important
            assert min(values[p] for p in row) >= max(v for p, v in values.items() if p not in row)
    # DrNAS' ops (no none): the same rule, 7 candidates
    d = _prune(images, seed=0, primitives=BASES["drnas"].primitives, keep=3)
    assert all(len(row) == 3 for row in d.edge_ops_normal + d.edge_ops_reduce)


def test_importance_is_the_relative_shift_and_the_lowest_are_removed() -> None:
    """A toy ranker whose score is the sum of known per-op values over the active ops:
    (origin - pruned) / origin is then that op's value over the total, and the selection
    drops the lowest; ties go by ETENAS' op order (its stable sort)."""
    g = torch.Generator().manual_seed(3)
    values = {r: torch.rand(EDGES, len(PRIMITIVES), generator=g, dtype=torch.float64) + 0.1
              for r in (False, True)}  # fmt: skip
    draws = {"n": 0}

    def toy(alphas: dict[bool, torch.Tensor]) -> float:
        # scaled by the draw: the relative shift does not depend on it
        scale = 1.0 + draws["n"]
        return scale * sum(float(values[r][alphas[r] > -INF / 2].sum()) for r in (False, True))

    def reinit() -> None:
        draws["n"] += 1

    ops_active = torch.tensor([p != "none" for p in PRIMITIVES])
    active = {r: ops_active.expand(EDGES, len(PRIMITIVES)).clone() for r in (False, True)}
    scores = op_importance(active, [toy, toy], reinit, repeat=3)
    assert draws["n"] == 3 * 2  # one draw per (repeat, ranker), shared by every op
    total = sum(float(values[r][active[r]].sum()) for r in (False, True))
    for r in (False, True):
        assert torch.isnan(scores[r][:, 0]).all()
        expected = 2 * values[r][:, 1:] / total  # two rankers summed, repeats averaged
        torch.testing.assert_close(scores[r][:, 1:], expected, rtol=1e-12, atol=0)
        for e in range(EDGES):
            kept = keep_ops(PRIMITIVES, scores[r][e].tolist(), 4)
            top = sorted(range(1, 8), key=lambda k: -float(values[r][e, k]))[:4]
            assert kept == [PRIMITIVES[k] for k in sorted(top)]
    # ties: equal scores drop the op earlier in ETENAS' order (skip, sep3, sep5 go first)
    tied = [float("nan")] + [0.5] * 7
    assert ETENAS_ORDER[1:4] == ("skip_connect", "sep_conv_3x3", "sep_conv_5x5")
    assert keep_ops(PRIMITIVES, tied, 4) == [
        "max_pool_3x3", "avg_pool_3x3", "dil_conv_3x3", "dil_conv_5x5"
    ]  # fmt: skip
    # dil3 lowest, then max, avg, skip tied: ETENAS removes skip and avg (DARTS' order
    # would have removed max and avg)
    assert keep_ops(PRIMITIVES, [float("nan"), 0.1, 0.1, 0.1, 0.3, 0.3, 0.0, 0.3], 4) == [
        "max_pool_3x3", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_5x5"
    ]  # fmt: skip


def test_nngp_frobenius_against_numpy() -> None:
    """||corrcoef(logits)||_F over the examples of both batches, batch-statistics BN."""
    torch.manual_seed(0)
    net = Supernet(scoring_spec(PRIMITIVES, 1, STEPS, 2, 10)).train()
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    alphas = {r: torch.zeros(EDGES, 8) for r in (False, True)}
    alphas[True][0, 3] = -INF
    value = nngp_frobenius(net, batches, alphas)
    with torch.no_grad():
        logits = np.concatenate([net(x).double().numpy() for x in batches])
    centered = logits - logits.mean(axis=1, keepdims=True)
    unit = centered / np.linalg.norm(centered, axis=1, keepdims=True)
    expected = np.sqrt(((unit @ unit.T) ** 2).sum())
    assert logits.shape == (16, 10)
    assert value == pytest.approx(expected, rel=1e-5)
    assert value == pytest.approx(np.linalg.norm(np.corrcoef(logits), "fro"), rel=1e-5)
    assert torch.equal(net.alpha_reduce[0], torch.tensor([0, 0, 0, -INF, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="train mode"):
        nngp_frobenius(net.eval(), batches, alphas)


def test_prunable_ops_match_the_bases() -> None:
    for name, count in PRUNABLE_OPS.items():
        assert count == len([p for p in BASES[name].primitives if p != "none"]), name
    assert set(BASES) - set(PRUNABLE_OPS) == {"msrdarts", "bdarts"}


def _with(method: dict, **search) -> dict:
    params = raw()
    params["methods"]["x"] = {**copy.deepcopy(params["methods"]["halfspace-darts-1st"]), **method}
    params["methods"]["x"]["search"] = {**params["methods"]["x"]["search"], **search}
    return params


@pytest.mark.parametrize(
    ("method", "search", "message"),
    [
        ({"base": "msrdarts"}, {}, "base msrdarts cannot be pruned (it learns no architecture"),
        ({"base": "bdarts"}, {"layers": 2, "en_layers": 1}, "base bdarts cannot be pruned"),
        ({}, {"prune_keep": 7}, "methods.x.search.prune_keep: 7 keeps all 7 ops"),
        ({}, {"prune_repeat": None}, "methods.x.search.prune_repeat is required with prune"),
        ({}, {"prune": None}, "methods.x.search.prune_keep is set but prune is null"),
    ],
)
def test_prune_settings_are_checked(method: dict, search: dict, message: str) -> None:
    with pytest.raises(MlonasError) as exc:
        validate_params(_with(method, **search))
    assert message in str(exc.value) and "\n" not in str(exc.value)
    validate_params(_with({}, prune_keep=6))


def test_a_pruned_search_records_its_mask_and_never_prunes_again(
    tiny_cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    method = "halfspace-darts-1st"
    keep = tiny_cfg.method(method).search.prune_keep
    record = search(tiny_cfg, tmp_path / "straight", method=method)
    alphas = json.loads((tmp_path / "straight" / "alphas.json").read_text())
    prune, arch = alphas["prune"], alphas["architectures"]["model"]
    assert prune["pruner"] == "etenas" and prune["settings"]["prune_keep"] == keep
    for kind in ("normal", "reduce"):
        ops = arch[f"edge_ops_{kind}"]
        assert ops == prune[f"edge_ops_{kind}"]
        assert all(len(row) == keep and "none" not in row for row in ops)
        assert len(arch[f"alpha_{kind}"][0]) == keep
        assert len(prune[f"scores_{kind}"]) == len(ops)
        # the genotype chooses among each edge's kept ops only
        pairs = arch["genotype"][kind]
        offset = 0
        for node in range(len(pairs) // 2):
            for op, j in pairs[2 * node : 2 * node + 2]:
                assert op in ops[offset + j]
            offset += node + 2
    assert record["wall_time_s"] > 0

    # killed after the first epoch's checkpoint: the resumed run must not prune again
    kill_after_first_save(monkeypatch)
    with pytest.raises(Killed):
        search(tiny_cfg, tmp_path / "resumed", method=method)

    def no_pruning(*args, **kwargs):
        raise AssertionError("a resumed search pruned again")

    monkeypatch.setattr(zeroshot, "etenas_prune", no_pruning)
    search(tiny_cfg, tmp_path / "resumed", method=method)
    a = (tmp_path / "straight" / "alphas.json").read_bytes()
    assert a == (tmp_path / "resumed" / "alphas.json").read_bytes()
