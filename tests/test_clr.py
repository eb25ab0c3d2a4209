"""B-DARTS' confident learning rate (CLR) as a search option of any base and scheme.

Checked against the authors' code (zixiangding/BNASv2 @ d649dfd):

- the schedule: ``confidence = ((epoch + 1) / args.epochs) ** power`` with the 0-based
  epoch, 50 epochs and power 2 (train_search_b_confidence.py:31,41,147): 4e-4, 0.25, 1.0
  in epochs 0, 24, 49;
- first order: Adam's lr is arch_lr * confidence (architect_confidence.py:33-41,51-54);
- second order: the *validation loss* is multiplied by the confidence before DARTS'
  unrolled backward (architect_confidence.py:56-59). The reference below recomputes that
  algorithm from scratch (the DARTS architect with the scaled loss: its direct term, its
  vector and its finite-difference radius R = 0.01 / ||vector||) and must equal c times
  mlonas' unscaled hypergradient, which is what ``confidence_scales: hypergradient`` applies.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_nets import LOSS, batches, flat, tiny_net

from mlonas.config import search_settings
from mlonas.mlo import VirtualStep, darts_arch_grad
from mlonas.search.bases import get_base
from mlonas.search.common import SchemeSetup
from mlonas.search.schemes import PlainScheme
from mlonas.settings import PlainOptions, SearchSettings


def paper_settings(**over: object) -> SearchSettings:
    from helpers import REPO

    from mlonas.config import load_raw

    return replace(search_settings(load_raw(REPO / "params.yaml"), "darts-1st"), **over)


def test_confidence_schedule_is_the_authors() -> None:
    s = paper_settings(arch_lr_schedule="confident")
    darts = get_base("darts")
    got = [darts.arch_confidence(e, s) for e in (0, 24, 49)]
    assert got == pytest.approx([4e-4, 0.25, 1.0], rel=1e-12)
    assert darts.arch_confidence(7, paper_settings()) == 1.0  # constant: DARTS
    # over several stages E is the whole search (P-DARTS: 3 x 25 epochs)
    pd = paper_settings(arch_lr_schedule="confident", epochs=25, stage_ops=(8, 5, 3))
    assert get_base("pdarts").arch_confidence(74, pd) == 1.0
    assert get_base("pdarts").arch_confidence(36, pd) == pytest.approx((37 / 75) ** 2)


def official_second_order(net, c: float, xi: float, train, val, r: float = 0.01):
    """The DARTS architect's unrolled step with B-DARTS' scaled validation loss, from
    scratch: w' = w - xi * grad_w L_train; loss = c * L_val(w'); dalpha = grad_alpha loss;
    vector = grad_w' loss; R = r / ||vector||; implicit = (grad_alpha L_train(w + R v) -
    grad_alpha L_train(w - R v)) / 2R; the hypergradient is dalpha - xi * implicit."""
    m = copy.deepcopy(net)
    w, a = m.weight_parameters(), m.arch_parameters()
    g = torch.autograd.grad(LOSS(m(train[0]), train[1]), w)
    unrolled = copy.deepcopy(m)
    with torch.no_grad():
        for p, gi in zip(unrolled.weight_parameters(), g, strict=True):
            p.sub_(xi * gi)
    loss = c * LOSS(unrolled(val[0]), val[1])
    ga = torch.autograd.grad(loss, unrolled.arch_parameters(), retain_graph=True)
    vector = torch.autograd.grad(loss, unrolled.weight_parameters())
    radius = r / flat(list(vector)).norm()

    def grad_alpha_at(sign: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, v in zip(w, vector, strict=True):
                p.add_(sign * radius * v)
        out = torch.autograd.grad(LOSS(m(train[0]), train[1]), a)
        with torch.no_grad():
            for p, v in zip(w, vector, strict=True):
                p.sub_(sign * radius * v)
        return list(out)

    gp, gn = grad_alpha_at(1.0), grad_alpha_at(-1.0)
    return [d - xi * (p - n) / (2 * radius) for d, p, n in zip(ga, gp, gn, strict=True)]


@pytest.mark.parametrize("c", [4e-4, 0.25])
def test_scaled_validation_loss_is_c_times_the_hypergradient(c: float) -> None:
    net, (train, val) = tiny_net(), batches()
    xi = 0.1
    want = official_second_order(net, c, xi, train, val)
    ours, _ = darts_arch_grad(
        net, LOSS, train, val, mode="finite_difference", step=VirtualStep(lr=xi)
    )
    got = [c * g for g in ours]
    err = float((flat(got) - flat(want)).norm() / flat(want).norm())
    assert err < 1e-7
    # and the scale is not absorbed anywhere: the unscaled estimate differs by 1/c
    assert float((flat(list(ours)) - flat(want)).norm() / flat(want).norm()) > 0.5


def scheme_for(s: SearchSettings) -> PlainScheme:
    setup = SchemeSetup(
        base=get_base("darts"), settings=s, options=PlainOptions(), num_classes=3,
        mode="first_order", device=torch.device("cpu"), seed=0, n_train=6,
        image_shape=(3, 8, 8),
    )  # fmt: skip
    torch.manual_seed(0)
    scheme = PlainScheme(setup, {"model": setup.base.initial_state(s)})
    scheme.model.double()
    return scheme


def first_arch_update(s: SearchSettings, c: float) -> torch.Tensor:
    scheme = scheme_for(s)
    scheme.set_arch_confidence(c)
    before = flat([a.detach().clone() for a in scheme.model.arch_parameters()])
    g = torch.Generator().manual_seed(2)
    grads = [
        torch.randn(a.shape, generator=g, dtype=a.dtype) for a in scheme.model.arch_parameters()
    ]
    scheme.arch_step(scheme.a_opt, scheme.model.arch_parameters(), grads)
    return flat([a.detach() for a in scheme.model.arch_parameters()]) - before


def test_lr_scaling_scales_the_step_and_adam_cancels_a_scaled_gradient() -> None:
    """Adam's first step is lr * g / |g| per entry: CLR on the lr scales it by c, CLR on
    the gradient (the authors' second order) leaves it as it is, up to weight decay and
    Adam's eps. benchmarks/clr_adam.py measures the same over a whole search."""
    c = 0.01
    no_wd = dict(arch_weight_decay=0.0, arch_lr_schedule="confident")
    plain = first_arch_update(paper_settings(arch_weight_decay=0.0), 1.0)
    lr = first_arch_update(paper_settings(**no_wd, confidence_scales="lr"), c)
    grad = first_arch_update(paper_settings(**no_wd, confidence_scales="hypergradient"), c)
    torch.testing.assert_close(lr, c * plain, rtol=1e-9, atol=0)
    # equal up to Adam's eps (1e-8) against the smallest |c g| (~1e-5 here)
    torch.testing.assert_close(grad, plain, rtol=1e-3, atol=0)


def test_confident_schedule_reaches_the_search(tmp_path: Path, monkeypatch) -> None:
    """params.yaml's CLR keys reach the loop: each epoch's steps run with its factor."""
    from conftest import tiny_config

    from mlonas.data.splits import write_split
    from mlonas.search.common import Scheme
    from mlonas.search.loop import run_search

    seen: list[float] = []
    real = Scheme.set_arch_confidence
    monkeypatch.setattr(
        Scheme, "set_arch_confidence", lambda self, c: (seen.append(c), real(self, c))[1]
    )
    cfg = tiny_config(tmp_path, {"search": {"arch_lr_schedule": "confident", "epochs": 2}})
    split = cfg.split_path("cifar10")
    write_split(cfg, "cifar10", split)
    run_search(cfg, "cifar10", "darts-1st", 0, split, str(tmp_path / "run"), "cpu")
    assert seen == [0.25, 1.0]
