"""DrNAS (Chen et al., ICLR 2021) as a base: Dirichlet mixing with one draw per
hypergradient, its two stages (prune by eta, widen the ops) and its schedule.

Independent references: torch's own ``Dirichlet.rsample`` gradient (the official code's
estimator), torch's ``CosineAnnealingLR`` (the official scheduler), the official code's
rules for pruning and widening (xiangning-chen/DrNAS @ f2caa4d: ``utils.prune``,
``net2wider.py``), and, for the hypergradients, finite differences against exact autograd
on the smooth float64 surrogate, with the draw shared and (to show why) without.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import REPO
from tiny_nets import LOSS, batches, cosine, images, momentum_step, rel_err, tiny_audience, tiny_net

from mlonas.config import load_raw, search_settings, validate_params
from mlonas.errors import MlonasError
from mlonas.mlo import darts_arch_grad
from mlonas.mlo.lease import Explanations, lease_arch_grad
from mlonas.mlo.sgl import Learner, sgl_arch_grad
from mlonas.search.bases import DRNAS_PRIMITIVES, get_base
from mlonas.space.pruning import top_ops
from mlonas.space.supernet import DirichletPathwise, Supernet, dirichlet_concentration

DRNAS = {"mixing": "dirichlet", "primitives": DRNAS_PRIMITIVES}


def drnas_settings(**over: object):
    return replace(search_settings(load_raw(REPO / "params.yaml"), "drnas"), **over)


# -- mixing -------------------------------------------------------------------------------


def test_pathwise_gradient_is_torchs_rsample_gradient() -> None:
    """The same sample through DirichletPathwise and through torch's rsample has the same
    gradient with respect to eta (torch's implicit reparameterisation)."""
    eta = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(5, 7, dtype=torch.float64)
    torch.manual_seed(3)
    x = torch.distributions.Dirichlet(dirichlet_concentration(eta)).rsample()
    (want,) = torch.autograd.grad((weights * x).sum(), eta)
    theta = DirichletPathwise.apply(x.detach(), dirichlet_concentration(eta))
    (got,) = torch.autograd.grad((weights * theta).sum(), eta)
    torch.testing.assert_close(theta, x.detach(), rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_plain_forward_samples_and_a_given_draw_is_used_by_every_cell() -> None:
    net = tiny_net(**DRNAS).eval()
    x = batches()[0][0]
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))  # the official infer() samples too
        draw = net.draw()
        assert draw is not None and draw[False].shape == (5, 7)
        torch.testing.assert_close(draw[False].sum(-1), torch.ones(5, dtype=torch.float64))
        assert torch.equal(net(x, draw), net(x, draw))
    assert tiny_net().draw() is None  # softmax supernets have no draw


# -- hypergradients with one draw ---------------------------------------------------------


def darts(mode: str, net: Supernet, eps: float = 0.01):
    train, val = batches()
    torch.manual_seed(11)  # the draw
    step = momentum_step(net)
    grads, _ = darts_arch_grad(net, LOSS, train, val, mode=mode, step=step, eps=eps)
    return grads


def test_darts_finite_difference_matches_exact_with_a_shared_draw() -> None:
    """Central differences: the error is O(eps^2) (a tenth of the radius, a hundredth of
    the error, until rounding), so they converge to exact autograd on the same draw."""
    net = tiny_net(**DRNAS)
    exact = darts("exact", net)
    errs = [rel_err(darts("finite_difference", net, eps), exact) for eps in (0.01, 0.001)]
    assert cosine(darts("finite_difference", net), exact) >= 0.9999
    assert errs[0] < 1e-3
    assert errs[1] < errs[0] / 30


def test_without_a_shared_draw_the_difference_measures_the_noise() -> None:
    """As the official architect does it (a fresh theta in every forward): the +eps and
    -eps passes see different draws and the estimate is nowhere near exact."""
    net = tiny_net(**DRNAS)
    exact = darts("exact", net)
    net.draw = lambda: None  # type: ignore[method-assign]  (each forward samples its own)
    noisy = darts("finite_difference", net)
    assert rel_err(noisy, exact) > 1.0


def test_lease_finite_difference_matches_exact_with_a_shared_draw() -> None:
    expl = Explanations(lr=20.0, direction=1.0, eps=0.125, weight=1.0)
    train, val = batches()
    delta = (
        torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 2
        - 1
    ) * 0.06

    def run(mode: str):
        explainer, audience = tiny_net(**DRNAS), tiny_audience()
        e_step = momentum_step(explainer, lr=0.2)
        w_step = momentum_step(audience, lr=0.2, seed=4)
        torch.manual_seed(11)
        return lease_arch_grad(
            explainer, audience, LOSS, train, val, train[0], delta, expl,
            mode=mode, e_step=e_step, w_step=w_step,
        ).grads  # fmt: skip

    exact, fd = run("exact"), run("finite_difference")
    assert cosine(fd, exact) >= 0.99


def test_sgl_finite_difference_matches_exact_with_a_shared_draw() -> None:
    train, val = batches()

    def run(mode: str):
        learners = []
        for i in range(2):
            w = tiny_net(seed=10 + i, **DRNAS)
            torch.manual_seed(20 + i)
            learners.append(Learner(Supernet(w.spec).double().tie_architecture(w), w))
        v = [momentum_step(lr.v_net, lr=0.2, seed=30 + i) for i, lr in enumerate(learners)]
        w = [momentum_step(lr.w_net, lr=0.2, seed=40 + i) for i, lr in enumerate(learners)]
        torch.manual_seed(11)
        return sgl_arch_grad(
            learners, LOSS, train, val, images(9), lam=0.5, mode=mode, v_steps=v, w_steps=w
        )

    e, f = run("exact"), run("finite_difference")
    for k in range(2):
        assert cosine(f.grads[k], e.grads[k]) >= 0.99
        assert cosine(f.cross[k], e.cross[k]) >= 0.99


# -- stages -------------------------------------------------------------------------------


def test_pruning_keeps_the_top_eta_in_op_order() -> None:
    names = list(DRNAS_PRIMITIVES)
    assert top_ops(names, [0.1, 0.5, -1, 0.3, 0.5, 0.0, 0.2], 4) == [
        "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_5x5"
    ]  # fmt: skip
    # a tie at the boundary keeps the lower index
    assert top_ops(names, [1, 0, 0, 0, 0, 0, 0], 2) == ["max_pool_3x3", "avg_pool_3x3"]


def test_one_cosine_over_both_stages_as_the_official_scheduler() -> None:
    s = drnas_settings()
    base = get_base("drnas")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=s.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 50.0, eta_min=s.lr_min)
    want = []
    for _ in range(50):  # get_lr() at the top of the epoch, step() at its end
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [base.lr(e, s) for e in range(50)] == pytest.approx(want, abs=1e-12)
    assert base.total_epochs(s) == 50
    # architecture steps from within-stage epoch 10 of each stage
    updated = [e for e in range(50) if base.updates_architecture(e, s)]
    assert updated == [*range(10, 25), *range(35, 50)]


def stage_pair(seed: int = 0):
    s = drnas_settings(init_channels=12, layers=3, steps=2, multiplier=2)
    base = get_base("drnas")
    torch.manual_seed(seed)
    old = base.build(s, 10, base.initial_state(s)).double()
    with torch.no_grad():
        for a in old.arch_parameters():
            a.normal_()
    state = base.next_state(old, 1, s)
    new = base.build(s, 10, state).double()
    return base, s, old, new, state


def test_the_next_stage_keeps_four_ops_per_edge_and_quarter_channels() -> None:
    _, _, old, new, state = stage_pair()
    assert all(len(ops) == 4 for ops in state["edge_ops_normal"] + state["edge_ops_reduce"])
    assert old.spec.partial_channels == 6 and new.spec.partial_channels == 4
    for ops, row in zip(state["edge_ops_normal"], old.alpha_normal, strict=True):
        assert ops == top_ops(DRNAS_PRIMITIVES, row.tolist(), 4)


def test_carry_over_widens_weights_and_optimizer_state_with_the_same_indices() -> None:
    base, _, old, new, state = stage_pair()
    w_old = torch.optim.SGD(old.weight_parameters(), lr=0.1, momentum=0.9)
    a_old = torch.optim.Adam(old.arch_parameters(), lr=6e-4)
    # momentum = 2 x weight and Adam's first moment = 3 x alpha: after the carry the same
    # relation must hold entry by entry, appended channels included
    for p in old.weight_parameters():
        w_old.state[p]["momentum_buffer"] = 2 * p.detach().clone()
    for a in old.arch_parameters():
        a_old.state[a] = {"step": torch.tensor(7.0), "exp_avg": 3 * a.detach().clone(),
                          "exp_avg_sq": a.detach().clone() ** 2}  # fmt: skip
    w_new = torch.optim.SGD(new.weight_parameters(), lr=0.1, momentum=0.9)
    a_new = torch.optim.Adam(new.arch_parameters(), lr=6e-4)
    torch.manual_seed(5)
    base.carry_over(old, new, [(w_old, w_new), (a_old, a_new)])
    for p in new.weight_parameters():
        torch.testing.assert_close(w_new.state[p]["momentum_buffer"], 2 * p.detach())
    for a in new.arch_parameters():
        torch.testing.assert_close(a_new.state[a]["exp_avg"], 3 * a.detach())
        assert float(a_new.state[a]["step"]) == 7.0
    # the kept ops' eta keep their values (utils.prune keeps them)
    for e, ops in enumerate(state["edge_ops_reduce"]):
        cols = [DRNAS_PRIMITIVES.index(o) for o in ops]
        torch.testing.assert_close(new.alpha_reduce[e], old.alpha_reduce[e, cols])
    # outside the candidate ops nothing changes shape or value
    olds = dict(old.named_parameters())
    for name, p in new.named_parameters():
        if ".ops." not in name and not name.startswith("alpha"):
            torch.testing.assert_close(p, olds[name])
    # inside: a widened conv starts with the old channels; each appended one is a copy
    cell = 1  # a reduction cell: its edges from the inputs stride (FactorizedReduce skip)
    for e, ops in enumerate(state["edge_ops_reduce"]):
        for i, name in enumerate(ops):
            o_op = old.cells[cell].edges[e].ops[DRNAS_PRIMITIVES.index(name)]
            n_op = new.cells[cell].edges[e].ops[i]
            for (pn, po), pw in zip(o_op.named_parameters(), n_op.parameters(), strict=True):
                c = po.shape[0]
                torch.testing.assert_close(pw[:c, : po.shape[1]], po, msg=pn)
                for extra in pw[c:, : po.shape[1]]:
                    assert any(torch.equal(extra, row) for row in po), pn


def test_a_widened_supernet_runs() -> None:
    base, _, old, new, _ = stage_pair()
    base.carry_over(old, new, [])
    assert torch.isfinite(new(torch.randn(2, 3, 16, 16, dtype=torch.float64))).all()


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"init_channels": 8}, "stage_partial_channels must each divide init_channels"),
        ({"stage_ops": [8, 4]}, "stage_ops must start at 7"),
        ({"stage_partial_channels": [6]}, "of one length"),
    ],
)
def test_drnas_settings_are_validated(over: dict, message: str) -> None:
    raw = load_raw(REPO / "params.yaml")
    raw["methods"]["drnas"]["search"].update(over)
    with pytest.raises(MlonasError, match=message):
        validate_params(raw)
