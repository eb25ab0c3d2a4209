"""Replay the official DARTS-family codes' golden fixtures through mlonas' public API.

The fixtures (``tests/fixtures/parity``, copied from ``../shared/reference/parity``; the
README there documents them) were produced by running the official search code of DARTS
(quark0/darts), PC-DARTS, P-DARTS and DARTS- on tiny float64 networks: initial states,
batches, train-mode logits, architecture gradients, three full search steps, derivations,
P-DARTS' pruning and every base's per-epoch schedule. Here the official parameter names
are mapped onto :class:`mlonas.space.supernet.Supernet` and every recorded call is
replayed with the settings params.yaml gives each method (only the network size is taken
from the fixture), so a drift in the supernet, an op, a hypergradient, a scheme step, a
derivation rule, a schedule or params.yaml itself fails here.

Where mlonas deliberately differs by default (BN running statistics of the architecture
step: ``search.arch_bn_stats``), the official behaviour is replayed under its setting and
the default is checked to differ only there (docs/fidelity.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import REPO
from torch import nn

from mlonas.config import Method, load_config
from mlonas.mlo import VirtualStep, darts_arch_grad
from mlonas.search.bases import Base, get_base
from mlonas.search.common import Scheme, SchemeSetup, StepBatch
from mlonas.search.schemes import PlainScheme
from mlonas.settings import PlainOptions, SearchSettings
from mlonas.space.genotype import genotype_from_alphas
from mlonas.space.supernet import Supernet

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
# fixture -> the params.yaml method whose settings it is replayed with
METHOD = {
    "darts": "darts-1st",
    "pcdarts": "pcdarts",
    "pdarts": "pdarts",
    "dartsminus": "darts-minus",
}
# DARTS, PC-DARTS, DARTS-: cells.i._ops.e._ops.k; P-DARTS: cells.i.cell_ops.e.m_ops.j
EDGE_OP = re.compile(r"cells\.(\d+)\.(?:_ops|cell_ops)\.(\d+)\.(?:_ops|m_ops)\.(\d+)\.(.+)")
ARCH_NAMES = {
    "alphas_normal": "alpha_normal",
    "alphas_reduce": "alpha_reduce",
    "betas_normal": "beta_normal",
    "betas_reduce": "beta_reduce",
}


@pytest.fixture(autouse=True)
def _float64_one_thread() -> Iterator[None]:
    """The fixtures are float64; one thread is ~100x faster than two on these tiny nets."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@cache
def fixture(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the .pt fixture, its JSON sidecar); the sidecar's sha256 pins the .pt file."""
    meta = json.loads((FIXTURES / f"{name}.json").read_text("utf-8"))
    path = FIXTURES / f"{name}.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"], path
    return torch.load(path, weights_only=True), meta


def unpack(fx: dict[str, Any], packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A packed official state (README "Loading") as {official name: tensor}."""
    table = fx["tables"][packed["table"]]
    ints, out, f, i = set(table["int_keys"]), {}, 0, 0
    for key, shape in zip(table["keys"], table["shapes"], strict=True):
        n = math.prod(shape)
        if key in ints:
            out[key] = packed["int64"][i : i + n].reshape(shape)
            i += n
        else:
            out[key] = packed["float64"][f : f + n].reshape(shape)
            f += n
    return out


def ours_name(model: Supernet, key: str) -> str:
    """The official parameter/buffer name ``key`` in mlonas' supernet (README table)."""
    if key in ARCH_NAMES:
        return ARCH_NAMES[key]
    if m := re.fullmatch(r"cells\.(\d+)\.preprocess(\d)\.op\.(\d+)\.(.+)", key):
        return "cells.{}.preprocess{}.{}.{}".format(*m.groups())
    if m := re.fullmatch(r"cells\.(\d+)\._ops\.(\d+)\.auxiliary_op\.(.+)", key):
        return "cells.{}.aux.{}.{}".format(*m.groups())
    if m := EDGE_OP.fullmatch(key):
        cell, edge, op, rest = int(m[1]), int(m[2]), int(m[3]), m[4]
        primitive = model.spec.edge_ops(model.cells[cell].reduction)[edge][op]
        if primitive.startswith("sep_conv"):  # op.{1,2,3,5,6,7} -> {0.1,0.2,0.3,1.1,1.2,1.3}
            n, tail = re.fullmatch(r"op\.(\d)\.(.+)", rest).groups()  # type: ignore[union-attr]
            rest = f"{int(n) // 4}.{int(n) % 4}.{tail}"
        elif primitive.startswith("dil_conv"):  # op.{1,2,3} -> {1,2,3}
            rest = rest.removeprefix("op.")
        return f"cells.{cell}.edges.{edge}.ops.{op}.{rest}"
    return key  # stem, classifier, factorized-reduce preprocessing: same names


def mapped(model: Supernet, official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``official`` renamed onto ``model``; each of our entries gets exactly one value."""
    out: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        name = ours_name(model, key)
        assert name not in out, f"{key} and another official entry both map to {name}"
        out[name] = value
    return out


def load_official(model: Supernet, official: dict[str, torch.Tensor]) -> None:
    state = mapped(model, official)
    ours = model.state_dict()
    assert set(state) == set(ours), (sorted(set(ours) - set(state)), sorted(set(state) - set(ours)))
    for name, value in state.items():
        assert value.shape == ours[name].shape, name
    model.load_state_dict(state, strict=True)


@cache
def method(name: str) -> Method:
    """The params.yaml method (paper preset) fixture ``name`` is replayed with."""
    return load_config(REPO / "params.yaml").method(METHOD[name])


def base_of(name: str) -> Base:
    return get_base(method(name).base)


def settings(name: str, **size: Any) -> SearchSettings:
    """The method's search settings from params.yaml (paper preset) at the fixture's size."""
    _, meta = fixture(name)
    cfg = meta["config"]
    s = method(name).search
    s = replace(s, init_channels=cfg["C"], steps=cfg["steps"], multiplier=cfg["multiplier"])
    s = replace(s, stem_multiplier=cfg["stem_multiplier"], layers=cfg.get("layers", s.layers))
    return replace(s, **size)


def build(name: str, s: SearchSettings, state: dict[str, Any] | None = None) -> Supernet:
    base = base_of(name)
    state = state or base.initial_state(s)
    return base.build(s, fixture(name)[0]["config"]["num_classes"], state)


def arch_of(model: Supernet) -> dict[str, torch.Tensor]:
    inverse = {v: k for k, v in ARCH_NAMES.items()}
    return {inverse[n]: getattr(model, n).detach() for n in model.arch_names}


def set_arch(model: Supernet, arch: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, value in arch.items():
            getattr(model, ARCH_NAMES[key]).copy_(value)


def assert_rel(
    ours: list[torch.Tensor], official: dict[str, torch.Tensor], rel: float, names: list[str]
) -> None:
    for got, key in zip(ours, names, strict=True):
        want = official[key]
        err = float((got - want).norm() / want.norm())
        assert err <= rel, f"{key}: relative error {err:.3g} > {rel}"


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def edge_ops(switches: list[list[bool]], primitives: list[str]) -> list[list[str]]:
    return [[p for p, on in zip(primitives, row, strict=True) if on] for row in switches]


# -- the four methods' common replays --------------------------------------------------


def method_states(name: str) -> list[tuple[str, dict[str, Any], SearchSettings, dict[str, Any]]]:
    """[(label, fixture part, settings, arch state)]: one per network the fixture records
    (P-DARTS: stage 1 with all 8 ops, stage 2 with the officially pruned ops)."""
    fx, meta = fixture(name)
    if name != "pdarts":
        return [(name, fx, settings(name), {})]
    out = []
    for stage, key in enumerate(("stage1", "stage2")):
        part = fx[key]
        s = settings(name)
        s = replace(s, stage_layers=(*meta["config"]["stage_layers"], s.stage_layers[2]))
        state = {
            "stage": stage,
            "edge_ops_normal": edge_ops(part["switches_normal"], fx["primitives"]),
            "edge_ops_reduce": edge_ops(part["switches_reduce"], fx["primitives"]),
        }
        out.append((f"pdarts-{key}", part, s, state))
    return out


CASES = [
    pytest.param("darts", 0, id="darts"),
    pytest.param("pcdarts", 0, id="pcdarts"),
    pytest.param("pdarts", 0, id="pdarts-stage1"),
    pytest.param("pdarts", 1, id="pdarts-stage2"),
    pytest.param("dartsminus", 0, id="dartsminus"),
]


def replay_model(name: str, i: int) -> tuple[Supernet, dict[str, Any], dict[str, Any]]:
    """The supernet at the fixture's initial state, the fixture part and the settings."""
    fx, _ = fixture(name)
    _, part, s, state = method_states(name)[i]
    model = build(name, s, state or None)
    load_official(model, unpack(fx, part["state_init"]))
    if name == "dartsminus":
        model.aux_beta = fx["aux_beta"]
    return model, part, s


@pytest.mark.parametrize(("name", "i"), CASES)
def test_forward_matches_official(name: str, i: int) -> None:
    model, part, _ = replay_model(name, i)
    model.train()
    with torch.no_grad():
        logits = model(part["batches"]["x_fwd"])
    assert max_abs(logits, part["logits_train"]) <= 1e-10
    if name == "dartsminus":  # the auxiliary skip switched off
        model.aux_beta = 0.0
        with torch.no_grad():
            logits = model(part["batches"]["x_fwd"])
        assert max_abs(logits, fixture(name)[0]["logits_train_beta0"]) <= 1e-10


@pytest.mark.parametrize(("name", "i"), CASES)
def test_first_order_gradient_matches_official(name: str, i: int) -> None:
    model, part, _ = replay_model(name, i)
    model.train()
    val = tuple(part["batches"]["val"])
    grads, _ = darts_arch_grad(model, nn.CrossEntropyLoss(), val, val, mode="first_order")
    assert_rel(grads, part["grad1"], 1e-9, list(arch_of(model)))


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_pdarts_skip_dropout_draws_match_official(stage: str) -> None:
    """P-DARTS' dropout after the stride-1 skip: same seed, same mask, same outputs."""
    model, part, _ = replay_model("pdarts", ["stage1", "stage2"].index(stage))
    sd = part["skip_dropout"]
    model.skip_dropout = sd["p"]
    model.train()
    torch.manual_seed(sd["seed_logits"])
    with torch.no_grad():
        logits = model(part["batches"]["x_fwd"])
    assert max_abs(logits, sd["logits_train"]) <= 1e-10
    torch.manual_seed(sd["seed_grad"])
    val = tuple(part["batches"]["val"])
    grads, _ = darts_arch_grad(model, nn.CrossEntropyLoss(), val, val, mode="first_order")
    assert_rel(grads, sd["grad1"], 1e-9, list(arch_of(model)))


def test_darts_second_order_gradient_matches_official() -> None:
    """DARTS Eqs. 7-8 as the official architect computes them, without and with momentum."""
    fx, meta = fixture("darts")
    s = settings("darts")
    model = build("darts", s)
    train, val = tuple(fx["batches"]["train"]), tuple(fx["batches"]["val"])
    for key, state, momentum in (
        ("grad2_no_momentum", "state_init", None),
        ("grad2", "state_warm", "momentum_warm"),
    ):
        load_official(model, unpack(fx, fx[state]))
        opt = Scheme.weight_optimizer(model.weight_parameters(), s)
        opt.param_groups[0]["lr"] = fx["lr_steps"]
        if momentum:
            buffers = mapped(model, unpack(fx, fx[momentum]))
            for n, p in model.named_weight_parameters():
                opt.state[p]["momentum_buffer"] = buffers[n].clone()
        model.train()
        grads, _ = darts_arch_grad(
            model,
            nn.CrossEntropyLoss(),
            train,
            val,
            mode="finite_difference",
            step=VirtualStep.from_optimizer(opt),
            eps=s.fd_eps,
        )
        assert_rel(grads, fx[key], meta["tolerances"]["grad2"]["rel"], list(arch_of(model)))
    # the BN running statistics of the warm state (eval-mode forward)
    load_official(model, unpack(fx, fx["state_warm"]))
    model.eval()
    with torch.no_grad():
        assert max_abs(model(fx["batches"]["x_fwd"]), fx["logits_eval_warm"]) <= 1e-10


# -- three full search steps -----------------------------------------------------------

STEP_CASES = [
    pytest.param("darts", 0, "steps_first", id="darts-first"),
    pytest.param("darts", 0, "steps_second", id="darts-second"),
    pytest.param("pcdarts", 0, "steps_first", id="pcdarts"),
    pytest.param("pdarts", 0, "steps_first", id="pdarts-stage1"),
    pytest.param("pdarts", 1, "steps_first", id="pdarts-stage2"),
    pytest.param("dartsminus", 0, "steps_first", id="dartsminus"),
]


def run_steps(
    name: str, i: int, key: str, bn_stats: str
) -> tuple[PlainScheme, dict[str, Any], list[dict[str, torch.Tensor]], float]:
    """Three ``PlainScheme.step`` calls from the fixture's start state, as the official
    ``train()`` ran them; returns the scheme, the fixture part, α after each step and the
    mean training loss."""
    fx, _ = fixture(name)
    _, part, s, state = method_states(name)[i]
    s = replace(s, arch_bn_stats=bn_stats)
    order = "second" if key == "steps_second" else "first"
    setup = SchemeSetup(
        base=base_of(name),
        settings=s,
        options=PlainOptions(),
        num_classes=fx["config"]["num_classes"],
        mode="finite_difference" if order == "second" else "first_order",
        device=torch.device("cpu"),
        seed=0,
        n_train=4,
        image_shape=(3, 8, 8),
    )
    base_state = state or setup.base.initial_state(s)
    scheme = PlainScheme(setup, {"model": base_state})
    model = scheme.model
    start = "state_warm" if name == "darts" else "state_init"
    load_official(model, unpack(fx, part[start]))
    if name == "darts":  # DARTS' steps start from the warm state with its momentum
        buffers = mapped(model, unpack(fx, fx["momentum_warm"]))
        for n, p in model.named_weight_parameters():
            scheme.w_opt.state[p]["momentum_buffer"] = buffers[n].clone()
    epoch = fx.get("epoch_steps", 0)
    base: Base = setup.base
    assert base.updates_architecture(epoch, s)
    base.set_epoch(model, epoch, s)
    if name == "dartsminus":
        assert model.aux_beta == pytest.approx(fx["aux_beta"], abs=1e-12)
    model.skip_dropout = 0.0  # the fixture's P-DARTS steps ran a network built with p = 0
    lr = base.lr(epoch, s) if "epoch_steps" in fx else fx["lr_steps"]
    assert lr == pytest.approx(fx["lr_steps"], abs=1e-12)
    scheme.start_epoch(epoch, lr)
    alphas, losses = [], []
    b = part["batches"]
    for step in range(3):
        x, y = b["steps_train"][step]
        batch = StepBatch(x, y, torch.arange(len(y)), tuple(b["steps_val"][step]))
        counters = scheme.step(batch, update_arch=True, epoch=epoch, step=step)
        alphas.append({k: v.clone() for k, v in arch_of(model).items()})
        losses.append(counters["loss_sum"] / counters["n"])
    return scheme, part[key], alphas, sum(losses) / 3


@pytest.mark.parametrize(("name", "i", "key"), STEP_CASES)
@pytest.mark.parametrize("bn_stats", ["private", "shared"])
def test_three_search_steps_match_official(name: str, i: int, key: str, bn_stats: str) -> None:
    """α after each step, every weight after three steps and the mean training loss match
    the official ``train()`` under both BN-statistics settings; the running statistics match
    it under ``shared`` (the official architect's behaviour) and differ under ``private``."""
    fx, meta = fixture(name)
    scheme, want, alphas, mean_loss = run_steps(name, i, key, bn_stats)
    model = scheme.model
    tol = meta["tolerances"]
    for step, (got, expected) in enumerate(zip(alphas, want["alphas_per_step"], strict=True)):
        for k in expected:
            err = max_abs(got[k], expected[k])
            assert err <= tol["steps_alphas"]["max_abs"], f"step {step + 1} {k}: {err:.3g}"
    after = mapped(model, unpack(fx, want["state_after"]))
    ours = model.state_dict()
    buffers = {n for n, _ in model.named_buffers()}
    stats_differ = []
    for n, value in after.items():
        err = max_abs(ours[n], value)
        if n in buffers and bn_stats == "private":
            stats_differ.append(err > 0)
            continue
        limit = 0.0 if n.endswith("num_batches_tracked") else tol["steps_weights"]["max_abs"]
        assert err <= limit, f"{n}: {err:.3g}"
    if bn_stats == "private":  # only the weight steps counted: the official counts more
        assert any(stats_differ)
    assert mean_loss == pytest.approx(want["mean_train_loss"], abs=1e-12)
    if "momentum_after" in want:
        buffers_after = mapped(model, unpack(fx, want["momentum_after"]))
        for n, p in model.named_weight_parameters():
            err = max_abs(scheme.w_opt.state[p]["momentum_buffer"], buffers_after[n])
            assert err <= tol["steps_weights"]["max_abs"], n


# -- derivation, pruning, schedules ----------------------------------------------------


@pytest.mark.parametrize("name", ["darts", "pcdarts", "dartsminus"])
def test_genotypes_match_official(name: str) -> None:
    """``Supernet.genotype()`` and the export path (alphas.json record) both give the
    official ``genotype()``, order and exact ties included."""
    fx, _ = fixture(name)
    model = build(name, settings(name))
    for case in fx["genotypes"]:
        set_arch(model, case["arch"])
        assert model.genotype().to_dict() == case["genotype"], case["kind"]
        record = {"selected": "model", "architectures": {"model": model.arch_record()}}
        assert genotype_from_alphas(record).to_dict() == case["genotype"], case["kind"]


@pytest.mark.parametrize("key", ["prune_after_stage1", "prune_after_stage2"])
def test_pdarts_pruning_matches_official(key: str) -> None:
    fx, _ = fixture("pdarts")
    prims = fx["primitives"]
    for case in fx[key]:
        s = settings("pdarts")
        state = {
            "stage": case["sp"],
            "edge_ops_normal": edge_ops(case["switches_normal_in"], prims),
            "edge_ops_reduce": edge_ops(case["switches_reduce_in"], prims),
        }
        s = replace(s, stage_layers=(3, 3, 3))
        model = build("pdarts", s, state)
        set_arch(model, {k: case[k] for k in ("alphas_normal", "alphas_reduce")})
        nxt = get_base("pdarts").next_state(model, case["sp"] + 1, s)
        assert nxt["edge_ops_normal"] == edge_ops(case["switches_normal"], prims), case["kind"]
        assert nxt["edge_ops_reduce"] == edge_ops(case["switches_reduce"], prims), case["kind"]


def test_pdarts_final_derivation_matches_official() -> None:
    """The last stage's genotype for every skip-connect limit 8..0 (the paper uses 2), and
    without a limit, through the base's supernet and through alphas.json."""
    fx, _ = fixture("pdarts")
    prims = fx["primitives"]
    for case in fx["final_derivation"]:
        state = {
            "stage": case["sp"],
            "edge_ops_normal": edge_ops(case["switches_normal_in"], prims),
            "edge_ops_reduce": edge_ops(case["switches_reduce_in"], prims),
        }
        wanted = {None: case["genotype_unrestricted"]}
        wanted.update({int(k): g for k, g in case["genotype_by_max_skip"].items()})
        for limit, genotype in wanted.items():
            s = settings("pdarts", stage_layers=(3, 3, 3), max_skip_normal=limit)
            model = build("pdarts", s, state)
            set_arch(model, {k: case[k] for k in ("alphas_normal", "alphas_reduce")})
            assert model.genotype().to_dict() == genotype, (case["kind"], limit)
            record = {"selected": "model", "architectures": {"model": model.arch_record()}}
            assert genotype_from_alphas(record).to_dict() == genotype, (case["kind"], limit)


@pytest.mark.parametrize("name", list(METHOD))
def test_schedule_matches_official(name: str) -> None:
    """Learning rate, architecture-update epochs and the per-epoch knobs (DARTS-' β,
    P-DARTS' skip dropout) of params.yaml's settings, epoch by epoch."""
    fx, _ = fixture(name)
    sched = fx["schedule"]
    s = method(name).search
    base = base_of(name)
    model = build(name, settings(name))
    n = len(sched["lr_per_epoch"])
    stages = base.num_stages(s)
    assert s.epochs == n
    for stage in range(stages):
        for e in range(n):
            epoch = stage * n + e
            assert base.lr(epoch, s) == pytest.approx(sched["lr_per_epoch"][e], abs=1e-12)
            assert base.updates_architecture(epoch, s) == sched["arch_update_per_epoch"][e]
            base.set_epoch(model, epoch, s)
            if name == "dartsminus":
                want = sched["aux_beta_per_epoch"][e]
                assert model.aux_beta == pytest.approx(want, abs=1e-12), e
            if name == "pdarts":
                want = sched["skip_dropout_p_per_epoch"][stage][e]
                assert model.skip_dropout == pytest.approx(want, abs=1e-12), (stage, e)
    if name == "pdarts":
        assert list(s.stage_layers) == sched["stage_layers_paper"]


@pytest.mark.parametrize("name", ["darts", "pcdarts", "pdarts", "dartsminus"])
def test_same_seed_gives_official_initial_weights(name: str) -> None:
    """With the official seed, the supernet's constructor draws bitwise the official
    initial weights (and, except P-DARTS, whose alphas come from numpy, the alphas)."""
    fx, _ = fixture(name)
    part = fx["stage1"] if name == "pdarts" else fx
    _, _, s, state = method_states(name)[0]
    torch.manual_seed(part.get("seed", fx["config"]["seed"]))
    model = build(name, s, state or None)
    official = mapped(model, unpack(fx, part["state_init"]))
    for n, value in model.state_dict().items():
        if n in model.arch_names:
            continue
        assert torch.equal(value, official[n]), n
    if name != "pdarts":
        for k, v in arch_of(model).items():
            assert torch.equal(v, fx["alphas_at_construction"][k]), k
