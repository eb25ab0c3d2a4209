"""How accurate are the hypergradients? Three findings, measured on tiny float64 networks.

(a) DARTS second order on the real ReLU/max-pool supernet: the papers' finite-difference
    gradient (``finite_difference``; DARTS Eqs. 7-8, radius 0.01/||v||) and autograd
    through the unrolled step (``exact``), each against an independent numerical
    derivative of the unrolled objective

        F(alpha) = L_val(w - xi (mu m + grad_w L_train(w, alpha) + lambda w), alpha)

    (central differences written from scratch, over every alpha entry, with the step size
    checked along random directions). The same on the smooth surrogate (softplus, average
    pooling), where the two estimators agree: what differs on the real supernet is the
    finite difference straddling ReLU/max-pool kinks. (a') the same at the official DARTS
    code's golden fixture (tests/fixtures/parity/darts.pt: its state, batches and the
    gradient quark0/darts printed); (a'') finite_difference vs exact over more seeds.
(b) The paths the papers' chains leave out. LeaSE's architecture A also enters the
    explanation attack (Delta' is computed from the explainer f(.; E', A)); SGL's A_k also
    enters the pseudo-labels p_k = softmax(f(u; V'_k, A_k)). The fully unrolled objectives
    are written from scratch with every occurrence of the architecture differentiable;
    their gradient minus our ``exact`` (the papers' chain, computed exactly) is the
    left-out part, reported against the kept part of the same kind (LeaSE's audience
    term, SGL's cross-learner terms) and against the whole gradient.
(c) Our LeaSE and SGL ``exact`` modes against the papers' chains autograd-ed from scratch
    (the objectives of (b) with the architecture held constant where the papers hold it),
    and (b)'s left-out part against numerical directional derivatives.

Every table gives the relative error ||a - b|| / ||b|| and the cosine of what is compared,
with the settings. About 5 CPU-minutes, spread over ``--jobs`` processes (2.5 minutes on an
idle 2-core CPU; ``--quick``: about 1 CPU-minute):

    python benchmarks/hypergradient_accuracy.py
    python benchmarks/hypergradient_accuracy.py --seed 1 --quick
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from torch.func import functional_call

LOSS = nn.CrossEntropyLoss()
DT = torch.float64
NUM_CLASSES = 10
# DARTS' search optimizer (xi = lr), LeaSE's audience and explanations, SGL's lambda:
# params.yaml's paper settings.
LR, MOMENTUM, WD = 0.025, 0.9, 3e-4
EXPL = dict(lr=10.0, direction=1.0, eps=0.125, weight=1.0, init=0.5)
GAMMA, LAMBDA = 1.0, 0.1


# -- helpers ---------------------------------------------------------------------------
def flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def rel(a, b) -> float:
    a, b = flat(a), flat(b)
    return float((a - b).norm() / b.norm())


def cos(a, b) -> float:
    a, b = flat(a), flat(b)
    return float(a @ b / (a.norm() * b.norm()))


def nrm(ts) -> float:
    return float(flat(ts).norm())


def fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def cosf(a, b) -> str:
    """A cosine, written so that values near 1 stay readable."""
    c = cos(a, b)
    return f"1 − {1 - c:.1e}" if 0 < 1 - c < 1e-4 else f"{c:.6g}"


def same(a, b) -> str:
    return "yes" if all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) else "no"


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(fmt(c) if isinstance(c, float) else str(c) for c in r) + " |")


def supernet(seed: int, smooth: bool, steps: int, channels: int = 2, layers: int = 3):
    from mlonas.space.supernet import Supernet, SupernetSpec

    torch.manual_seed(seed)
    spec = SupernetSpec(
        init_channels=channels, num_classes=NUM_CLASSES, layers=layers, steps=steps,
        multiplier=steps, smooth=smooth,
    )  # fmt: skip
    net = Supernet(spec).to(DT).train()
    with torch.no_grad():  # alphas away from uniform, so the ops are distinguishable
        for a in net.arch_parameters():
            a.normal_(0, 0.3)
    return net


def batch(g: torch.Generator, n: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 3, size, size, generator=g, dtype=DT)
    return x, torch.randint(0, NUM_CLASSES, (n,), generator=g)


def warm_sgd(params: list[nn.Parameter], loss_of, batches, lr: float = LR):
    """An SGD optimizer (DARTS' settings) that has taken real steps: momentum buffers set."""
    opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WD)
    for b in batches:
        opt.zero_grad()
        loss_of(b).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def sgd_update(opt: torch.optim.SGD, weights, grads):
    """The optimizer's next step written out (not mlonas' VirtualStep): w - lr (mu m + g + wd w)."""
    grp = opt.param_groups[0]
    out = []
    for p, w, g in zip(grp["params"], weights, grads, strict=True):
        m = opt.state[p]["momentum_buffer"]
        out.append(w - grp["lr"] * (grp["momentum"] * m + g + grp["weight_decay"] * w))
    return out


class TinyReluAudience(nn.Module):
    """A tiny ReLU/max-pool stand-in for LeaSE's ResNet audience (conv-BN-ReLU-pool)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Fn:
    """Forward passes of a module with substituted parameters, written with
    torch.func.functional_call (not mlonas.mlo.core.Functional); train mode, private
    copies of the BN buffers."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        arch = {id(a) for a in getattr(net, "arch_parameters", list)()}
        named = list(net.named_parameters())
        self.w_names = [n for n, p in named if id(p) not in arch]
        self.a_names = [n for n, p in named if id(p) in arch]
        self.w0 = [p.detach().clone() for n, p in named if id(p) not in arch]
        self.a0 = [p.detach().clone() for n, p in named if id(p) in arch]

    def __call__(self, w, a, x: torch.Tensor) -> torch.Tensor:
        d = {n: b.clone() for n, b in self.net.named_buffers()}
        d.update(zip(self.w_names, w, strict=True))
        d.update(zip(self.a_names, a, strict=True))
        return functional_call(self.net, d, (x,))


def leaves(ts) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in ts]


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * torch.log_softmax(logits, dim=1)).sum(1)


# -- (a) DARTS second order against a numerical derivative -----------------------------
def darts_setup(seed: int, smooth: bool, steps: int):
    from mlonas.mlo import VirtualStep

    net = supernet(seed, smooth, steps)
    g = torch.Generator().manual_seed(1000 + seed)
    train, val = batch(g, 4), batch(g, 4)
    opt = warm_sgd(
        net.weight_parameters(), lambda b: LOSS(net(b[0]), b[1]), [batch(g, 4), batch(g, 4)]
    )
    for p in net.parameters():
        p.grad = None
    return net, train, val, opt, VirtualStep.from_optimizer(opt)


def task_darts_pair(seed: int, smooth: bool, steps: int) -> list[object]:
    """finite_difference vs exact on one network (exact is checked by task_darts)."""
    from mlonas.mlo import darts_arch_grad

    net, train, val, _, step = darts_setup(seed, smooth, steps)
    fd, _ = darts_arch_grad(net, LOSS, train, val, mode="finite_difference", step=step)
    ex, _ = darts_arch_grad(net, LOSS, train, val, mode="exact", step=step)
    return ["smooth" if smooth else "ReLU/max-pool", seed, rel(fd, ex), cosf(fd, ex)]


def unrolled_objective(net, opt, train, val):
    """F(alpha) = L_val(w - xi (mu m + grad_w L_train(w, alpha) + lambda w), alpha) from
    scratch (a copy of the network, ``opt``'s next step written out), and alpha's value."""
    work = copy.deepcopy(net).train()
    wp, ap = work.weight_parameters(), work.arch_parameters()
    w0 = [p.detach().clone() for p in net.weight_parameters()]
    a0 = [a.detach().clone() for a in net.arch_parameters()]

    def objective(alphas) -> float:
        with torch.no_grad():
            for p, w in zip(wp, w0, strict=True):
                p.copy_(w)
            for p, a in zip(ap, alphas, strict=True):
                p.copy_(a)
        grads = torch.autograd.grad(LOSS(work(train[0]), train[1]), wp)
        with torch.no_grad():
            for p, w1 in zip(wp, sgd_update(opt, w0, grads), strict=True):
                p.copy_(w1)
            return float(LOSS(work(val[0]), val[1]))

    return objective, a0


def directional(objective, a0, dirs, h: float) -> torch.Tensor:
    """(F(a0 + h d) - F(a0 - h d)) / 2h for each direction d."""
    out = []
    for d in dirs:
        plus = [a + h * e for a, e in zip(a0, d, strict=True)]
        minus = [a - h * e for a, e in zip(a0, d, strict=True)]
        out.append((objective(plus) - objective(minus)) / (2 * h))
    return torch.tensor(out, dtype=DT)


def task_darts(
    seed: int, smooth: bool, steps: int, h: float, h2: float, n_dirs: int, coordinates: bool
) -> dict:
    """(a) on one network. ``coordinates``: the numerical gradient over every alpha entry
    (2 evaluations of F each); otherwise only along ``n_dirs`` random directions."""
    from mlonas.mlo import darts_arch_grad

    t0 = time.perf_counter()
    net, train, val, opt, step = darts_setup(seed, smooth, steps)
    fd, _ = darts_arch_grad(net, LOSS, train, val, mode="finite_difference", step=step)
    ex, _ = darts_arch_grad(net, LOSS, train, val, mode="exact", step=step)
    fd_small, _ = darts_arch_grad(
        net, LOSS, train, val, mode="finite_difference", step=step, eps=1e-6
    )
    first, _ = darts_arch_grad(net, LOSS, train, val, mode="first_order")
    objective, a0 = unrolled_objective(net, opt, train, val)
    # directional derivatives along random directions with steps h/10, h and h2: converged
    # if the first two agree (a jump of F within reach of a step shows as a mismatch)
    g = torch.Generator().manual_seed(2000 + seed)
    dirs = [[torch.randn(a.shape, generator=g, dtype=DT) for a in a0] for _ in range(n_dirs)]
    d0, d1, d2 = (directional(objective, a0, dirs, t) for t in (h / 10, h, h2))

    def proj(grad) -> list[torch.Tensor]:
        return [torch.stack([flat(d) @ flat(grad) for d in dirs])]

    name = "smooth (softplus/avg-pool)" if smooth else "ReLU/max-pool"
    rows: list[list[object]] = []
    if coordinates:
        num = [torch.zeros_like(a) for a in a0]
        for i, a in enumerate(a0):
            for j in range(a.numel()):
                plus = [b.clone() for b in a0]
                minus = [b.clone() for b in a0]
                plus[i].view(-1)[j] += h
                minus[i].view(-1)[j] -= h
                num[i].view(-1)[j] = (objective(plus) - objective(minus)) / (2 * h)
        rows += [
            [name, f"finite_difference (r = 0.01/‖v‖) vs numerical (every entry, h = {h:g})",
             rel(fd, num), cosf(fd, num)],
            [name, f"exact vs numerical (every entry, h = {h:g})", rel(ex, num), cosf(ex, num)],
            [name, f"numerical: every-entry gradient · {n_dirs} directions vs directional",
             rel(proj(num), [d1]), cosf(proj(num), [d1])],
        ]  # fmt: skip
    else:
        rows += [
            [name, f"finite_difference (r = 0.01/‖v‖) · {n_dirs} directions vs numerical "
             f"directional derivatives (h = {h:g})", rel(proj(fd), [d1]), cosf(proj(fd), [d1])],
            [name, f"exact · {n_dirs} directions vs numerical directional derivatives",
             rel(proj(ex), [d1]), cosf(proj(ex), [d1])],
        ]  # fmt: skip
    second = [e - f for e, f in zip(ex, first, strict=True)]
    rows += [
        [name, "finite_difference (r = 0.01/‖v‖) vs exact", rel(fd, ex), cosf(fd, ex)],
        [name, "finite_difference with r = 1e-6/‖v‖ vs exact", rel(fd_small, ex),
         cosf(fd_small, ex)],
        [name, f"numerical: {n_dirs} directional derivatives, h = {h:g} vs h = {h / 10:g}",
         rel([d1], [d0]), cosf([d1], [d0])],
        [name, f"numerical: the same, h = {h2:g} vs h = {h:g}", rel([d2], [d1]),
         cosf([d2], [d1])],
        [name, "share of the second-order term: ‖exact − first_order‖ / ‖exact‖",
         nrm(second) / nrm(ex), ""],
    ]  # fmt: skip
    return dict(
        rows=rows, n_alpha=sum(a.numel() for a in a0),
        n_w=sum(p.numel() for p in net.weight_parameters()),
        time=f"{name} {time.perf_counter() - t0:.0f} s",
    )  # fmt: skip


def task_fixture(h: float, h2: float, n_dirs: int) -> dict:
    """(a) at the official DARTS code's own numbers: the golden fixture of
    tests/test_parity.py (network, warm state, momentum buffers, batches, lr and the
    second-order gradient quark0/darts printed), against numerical directional derivatives.
    Uses test_parity's name mapping; skipped with a reason if that is not available."""
    import sys
    from pathlib import Path

    dtype = torch.get_default_dtype()
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import test_parity as tp

        from mlonas.mlo import VirtualStep, darts_arch_grad
        from mlonas.search.common import Scheme

        torch.set_default_dtype(DT)  # the supernet is built in float64, as in test_parity
        fx, _ = tp.fixture("darts")
        s = tp.settings("darts")
        net = tp.build("darts", s)
        tp.load_official(net, tp.unpack(fx, fx["state_warm"]))
        opt = Scheme.weight_optimizer(net.weight_parameters(), s)
        opt.param_groups[0]["lr"] = fx["lr_steps"]
        buffers = tp.mapped(net, tp.unpack(fx, fx["momentum_warm"]))
        for n, p in net.named_weight_parameters():
            opt.state[p]["momentum_buffer"] = buffers[n].clone()
        net.train()
        official = [fx["grad2"][k] for k in tp.arch_of(net)]
    except Exception as e:  # a benchmark reports and goes on
        return dict(rows=[], note=f"skipped ({type(e).__name__}: {e})")
    finally:
        torch.set_default_dtype(dtype)
    train, val = tuple(fx["batches"]["train"]), tuple(fx["batches"]["val"])
    step = VirtualStep.from_optimizer(opt)
    fd, _ = darts_arch_grad(net, LOSS, train, val, mode="finite_difference", step=step, eps=0.01)
    ex, _ = darts_arch_grad(net, LOSS, train, val, mode="exact", step=step)
    objective, a0 = unrolled_objective(net, opt, train, val)
    g = torch.Generator().manual_seed(7000)
    dirs = [[torch.randn(a.shape, generator=g, dtype=DT) for a in a0] for _ in range(n_dirs)]
    d0, d1, d2 = (directional(objective, a0, dirs, t) for t in (h / 10, h, h2))

    def proj(grad) -> list[torch.Tensor]:
        return [torch.stack([flat(d) @ flat(grad) for d in dirs])]

    name = "official fixture (ReLU/max-pool)"
    rows = [
        [name, "official FD gradient (quark0/darts) vs ours, finite_difference",
         rel(fd, official), cosf(fd, official)],
        [name, f"official FD · {n_dirs} directions vs numerical directional derivatives",
         rel(proj(official), [d1]), cosf(proj(official), [d1])],
        [name, f"exact · {n_dirs} directions vs numerical directional derivatives",
         rel(proj(ex), [d1]), cosf(proj(ex), [d1])],
        [name, "official FD vs exact (whole gradient)", rel(official, ex), cosf(official, ex)],
        [name, f"numerical: directional derivatives, h = {h:g} vs h = {h / 10:g}",
         rel([d1], [d0]), cosf([d1], [d0])],
        [name, f"numerical: the same, h = {h2:g} vs h = {h:g}", rel([d2], [d1]),
         cosf([d2], [d1])],
    ]  # fmt: skip
    note = (
        f"the DARTS fixture of tests/fixtures/parity (C=2, 3 cells, 4 nodes, batch 4 of 8×8, "
        f"10 classes, alphas 0.3·N(0,1), warm state with momentum buffers, xi = "
        f"{fx['lr_steps']:g}); directions N(0, I), seed 7000"
    )
    return dict(rows=rows, note=note)


# -- (b), (c) LeaSE: the architecture inside the explanation attack ---------------------
def lease_setup(seed: int, smooth: bool, steps: int):
    from mlonas.mlo import VirtualStep
    from mlonas.mlo.lease import Explanations

    explainer = supernet(seed, smooth, steps)
    torch.manual_seed(500 + seed)
    audience = TinyReluAudience().to(DT).train()
    if smooth:
        audience.features[2] = audience.features[6] = nn.Softplus()
        audience.features[3] = nn.AvgPool2d(2)
    g = torch.Generator().manual_seed(3000 + seed)
    train, val = batch(g, 4), batch(g, 4)
    warm = [batch(g, 4), batch(g, 4)]
    e_opt = warm_sgd(explainer.weight_parameters(), lambda b: LOSS(explainer(b[0]), b[1]), warm)
    w_opt = warm_sgd(list(audience.parameters()), lambda b: LOSS(audience(b[0]), b[1]), warm)
    for p in (*explainer.parameters(), *audience.parameters()):
        p.grad = None
    e = EXPL
    delta = (torch.rand(train[0].shape, generator=g, dtype=DT) * 2 - 1) * e["init"] * e["eps"]
    expl = Explanations(lr=e["lr"], direction=e["direction"], eps=e["eps"], weight=e["weight"])
    e_step, w_step = VirtualStep.from_optimizer(e_opt), VirtualStep.from_optimizer(w_opt)
    return explainer, audience, train, val, delta, expl, e_opt, w_opt, e_step, w_step


def lease_objective(explainer, audience, train, val, delta, e_opt, w_opt, A, a_att, graph=True):
    """(L(E', A, val), gamma L(W', val)) of Eqs. 6-9, unrolled from scratch.

    ``A`` is the architecture of the explainer's training and validation losses, ``a_att``
    the one inside the attack's forward passes f(x + delta; E', .) and f(x; E', .). The
    full objective has a_att = A; the papers' chain A -> E' -> Delta' -> W' holds a_att
    constant. ``graph=False`` computes the value only (for numerical derivatives)."""
    fe, fa = Fn(explainer), Fn(audience)
    e = EXPL
    (x, y), (xv, yv) = train, val
    E, W = leaves(fe.w0), leaves(fa.w0)
    g_e = torch.autograd.grad(LOSS(fe(E, A, x), y), E, create_graph=graph)
    E1 = sgd_update(e_opt, E, g_e)  # Eq. 6
    d = delta.detach().clone().requires_grad_(True)
    target = torch.softmax(fe(E1, a_att, x), dim=1)
    attack = soft_ce(fe(E1, a_att, x + d), target).sum()  # O_Delta (Eq. 2, batch-summed)
    (g_d,) = torch.autograd.grad(attack, d, create_graph=graph)
    d1 = (d + e["direction"] * e["lr"] * g_d).clamp(-e["eps"], e["eps"])  # Eq. 7, projected
    shown = x * (1 + e["weight"] * (d1 / e["eps"]) ** 2)
    g_w = torch.autograd.grad(LOSS(fa(W, [], shown), y), W, create_graph=graph)
    W1 = sgd_update(w_opt, W, g_w)  # Eq. 8
    return LOSS(fe(E1, A, xv), yv), GAMMA * LOSS(fa(W1, [], xv), yv)


def lease_from_scratch(ctx, live: bool):
    """grad_A of the full objective (``live``) or of the papers' chain: (whole, audience)."""
    A = leaves(Fn(ctx[0]).a0)
    le, la = lease_objective(*ctx, A, A if live else [a.detach() for a in A])
    aud = torch.autograd.grad(la, A, retain_graph=True)
    return torch.autograd.grad(le + la, A), aud


def left_out_check(value, a0, left_out, seed: int, h: float = 1e-7) -> list[object]:
    """The left-out part along random directions d, numerically: the derivative in t of
    F(a0 + t d, inner a0 + t d) - F(a0 + t d, inner a0), against autograd's left_out · d."""
    g = torch.Generator().manual_seed(seed)
    num, ana = [], []
    for _ in range(N_DIRS):
        d = [torch.randn(a.shape, generator=g, dtype=DT) for a in a0]

        def at(t: float, d=d) -> float:
            a = [x + t * y for x, y in zip(a0, d, strict=True)]
            return value(a, a) - value(a, a0)

        num.append((at(h) - at(-h)) / (2 * h))
        ana.append(float(flat(left_out) @ flat(d)))
    ana_t, num_t = torch.tensor(ana, dtype=DT), torch.tensor(num, dtype=DT)
    return [LEFT_OUT_CHECK, rel([ana_t], [num_t]), cosf([ana_t], [num_t]), ""]


def left_out_row(
    scheme: str, smooth: bool, seed: int, full: list, ours: list, left_out: list, kept_terms: list
) -> dict:
    """Table (b)'s row: the left-out paths (the full objective's gradient minus our exact
    chain) against the norm of the kept terms of the same kind."""
    lo, kept = nrm(left_out), nrm(kept_terms)
    net = "smooth" if smooth else "ReLU/max-pool"
    row = [scheme, net, seed, lo, kept, lo / kept, lo / nrm(ours), cosf(full, ours)]
    return dict(row=row, ratio=lo / kept, rows_c=[])


def task_lease(seed: int, smooth: bool, steps: int, main: bool) -> dict:
    """(b) for one seed; with ``main`` also (c)."""
    from mlonas.mlo.lease import lease_arch_grad

    explainer, audience, train, val, delta, expl, e_opt, w_opt, e_step, w_step = lease_setup(
        seed, smooth, steps
    )
    ours, ours_aud = (
        lease_arch_grad(
            explainer, audience, LOSS, train, val, train[0], delta, expl, mode="exact",
            gamma=GAMMA, e_step=e_step, w_step=w_step, audience_only=only,
        ).grads
        for only in (False, True)
    )  # fmt: skip
    ctx = (explainer, audience, train, val, delta, e_opt, w_opt)
    full, _ = lease_from_scratch(ctx, live=True)
    left_out = [f - o for f, o in zip(full, ours, strict=True)]
    out = left_out_row("LeaSE", smooth, seed, full, ours, left_out, ours_aud)
    if main:
        chain, chain_aud = lease_from_scratch(ctx, live=False)

        def value(a, a_att) -> float:
            return float(sum(lease_objective(*ctx, a, a_att, graph=False)).detach())

        out["rows_c"] = [
            ["exact vs from-scratch chain (whole gradient)", rel(ours, chain),
             cosf(ours, chain), same(ours, chain)],
            ["exact audience_only vs from-scratch chain (audience term)",
             rel(ours_aud, chain_aud), cosf(ours_aud, chain_aud), same(ours_aud, chain_aud)],
            left_out_check(value, Fn(explainer).a0, left_out, 5000 + seed),
        ]  # fmt: skip
    return out


# -- (b), (c) SGL: the architecture inside the pseudo-labelling --------------------------
def sgl_setup(seed: int, smooth: bool, steps: int, k: int = 2):
    from mlonas.mlo import VirtualStep
    from mlonas.mlo.sgl import Learner
    from mlonas.space.supernet import Supernet

    learners, v_opts, w_opts = [], [], []
    g = torch.Generator().manual_seed(4000 + seed)
    train, val = batch(g, 4), batch(g, 4)
    unlabeled = batch(g, 4)[0]
    warm = [batch(g, 4), batch(g, 4)]
    for i in range(k):
        w = supernet(100 * seed + 10 + i, smooth, steps)
        torch.manual_seed(100 * seed + 20 + i)
        v = Supernet(w.spec).to(DT).train().tie_architecture(w)
        v_opts.append(warm_sgd(v.weight_parameters(), lambda b, v=v: LOSS(v(b[0]), b[1]), warm))
        w_opts.append(warm_sgd(w.weight_parameters(), lambda b, w=w: LOSS(w(b[0]), b[1]), warm))
        for p in (*v.parameters(), *w.parameters()):
            p.grad = None
        learners.append(Learner(v, w))
    v_steps = [VirtualStep.from_optimizer(o) for o in v_opts]
    w_steps = [VirtualStep.from_optimizer(o) for o in w_opts]
    return learners, train, val, unlabeled, v_opts, w_opts, v_steps, w_steps


def sgl_objective(learners, train, val, u, v_opts, w_opts, A, a_pl, graph=True):
    """sum_j L(W'_j, A_j, val) of Eqs. 5-7, unrolled from scratch.

    ``A[k]`` is learner k's architecture in its V- and W-networks' losses, ``a_pl[k]`` the
    one inside its pseudo-labelling pass softmax(f(u; V'_k, .)). The full objective has
    a_pl = A; the papers' chain A_k -> V'_k -> p_k -> W'_j holds a_pl constant."""
    K = len(learners)
    fv = [Fn(lr.v_net) for lr in learners]
    fw = [Fn(lr.w_net) for lr in learners]
    (x, y), (xv, yv) = train, val
    V = [leaves(f.w0) for f in fv]
    W = [leaves(f.w0) for f in fw]
    V1 = []
    for k in range(K):
        g = torch.autograd.grad(LOSS(fv[k](V[k], A[k], x), y), V[k], create_graph=graph)
        V1.append(sgd_update(v_opts[k], V[k], g))  # Eq. 5
    pl = [torch.softmax(fv[k](V1[k], a_pl[k], u), dim=1) for k in range(K)]
    total = torch.zeros((), dtype=DT)
    for k in range(K):
        o = LOSS(fw[k](W[k], A[k], x), y)
        logits_u = fw[k](W[k], A[k], u)
        for j in range(K):
            if j != k:
                o = o + LAMBDA * soft_ce(logits_u, pl[j]).mean()
        g = torch.autograd.grad(o, W[k], create_graph=graph)
        W1 = sgd_update(w_opts[k], W[k], g)  # Eq. 6
        total = total + LOSS(fw[k](W1, A[k], xv), yv)
    return total


def sgl_from_scratch(ctx, live: bool) -> list[torch.Tensor]:
    """grad_{A_k} of the full objective (``live``) or of the papers' chain, learners
    concatenated."""
    A = [leaves(Fn(lr.w_net).a0) for lr in ctx[0]]
    a_pl = A if live else [[t.detach() for t in a] for a in A]
    return list(torch.autograd.grad(sgl_objective(*ctx, A, a_pl), [a for al in A for a in al]))


def task_sgl(seed: int, smooth: bool, steps: int, main: bool) -> dict:
    """(b) for one seed; with ``main`` also (c)."""
    from mlonas.mlo.sgl import sgl_arch_grad

    learners, train, val, u, v_opts, w_opts, v_steps, w_steps = sgl_setup(seed, smooth, steps)
    res = sgl_arch_grad(
        learners, LOSS, train, val, u, lam=LAMBDA, mode="exact", v_steps=v_steps,
        w_steps=w_steps,
    )  # fmt: skip
    ours = [t for g in res.grads for t in g]
    cross = [t for g in res.cross for t in g]
    ctx = (learners, train, val, u, v_opts, w_opts)
    full = sgl_from_scratch(ctx, live=True)
    left_out = [f - o for f, o in zip(full, ours, strict=True)]
    out = left_out_row("SGL (K=2)", smooth, seed, full, ours, left_out, cross)
    if main:
        chain = sgl_from_scratch(ctx, live=False)
        n = len(learners[0].w_net.arch_parameters())
        K = len(learners)

        def value(a, a_pl) -> float:
            split = [a[k * n : (k + 1) * n] for k in range(K)]
            split_pl = [a_pl[k * n : (k + 1) * n] for k in range(K)]
            return float(sgl_objective(*ctx, split, split_pl, graph=False).detach())

        a0 = [t for lr in learners for t in Fn(lr.w_net).a0]
        out["rows_c"] = [
            ["exact vs from-scratch chain (all learners)", rel(ours, chain), cosf(ours, chain),
             same(ours, chain)],
            left_out_check(value, a0, left_out, 6000 + seed),
        ]  # fmt: skip
    return out


# -- running and printing ----------------------------------------------------------------
N_DIRS = 4
LEFT_OUT_CHECK = f"(b)'s left-out part · {N_DIRS} random directions vs numerical (h = 1e-7)"


def init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run(tasks: list[tuple], jobs: int, threads: int) -> list:
    """Run (function, *args) tasks, ``jobs`` processes at a time; results in task order."""
    if jobs <= 1:
        return [fn(*a) for fn, *a in tasks]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
        jobs, mp_context=mp.get_context("spawn"), initializer=init_worker, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(fn, *a) for fn, *a in tasks]
        return [f.result() for f in futures]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="seed of (a) and (c); first seed of (b)")
    p.add_argument("--seeds", type=int, default=4, help="seeds of (a″) and (b): seed..seed+n-1")
    p.add_argument(
        "--quick", action="store_true", help="2-node cells; (b) on the ReLU networks only"
    )
    p.add_argument("--jobs", type=int, default=2, help="worker processes (2 cores: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    steps = 2 if args.quick else 4
    h, h2 = 1e-6, 1e-5
    seeds = list(range(args.seed, args.seed + args.seeds))
    nets_b = (False,) if args.quick else (False, True)  # smooth: the first seed only
    # longest first, so that two workers finish together. (a): every alpha entry on the
    # ReLU network, 16 random directions on the smooth one
    tasks: list[tuple] = [
        (task_darts, args.seed, False, steps, h, h2, 8, True),
        (task_darts, args.seed, True, steps, h, h2, 16, False),
        (task_fixture, h, h2, 16),
    ]
    tasks += [(fn, s, sm, steps, s == args.seed) for sm in nets_b for fn in (task_lease, task_sgl)
              for s in (seeds if not sm else seeds[:1])]  # fmt: skip
    tasks += [(task_darts_pair, s, sm, steps) for sm in (False, True) for s in seeds]
    results = run(tasks, args.jobs, args.threads)
    a_res, fix, results = results[:2], results[2], results[3:]
    b_res, pair_rows = results[: -2 * len(seeds)], results[-2 * len(seeds) :]

    table(
        f"(a) DARTS second order vs the numerical derivative of the unrolled objective "
        f"(seed {args.seed})",
        ["network", "compared", "relative error ‖a−b‖/‖b‖", "cosine"],
        [row for r in a_res for row in r["rows"]],
    )
    print(
        f"\nSettings: float64 supernet C=2, 3 cells, {steps} nodes per cell, 10 classes, "
        f"{a_res[0]['n_alpha']} alpha entries (0.3·N(0,1)), {a_res[0]['n_w']} weights; "
        f"batches of 4 8×8 images; SGD lr = xi = {LR}, momentum {MOMENTUM} (buffers from 2 "
        f"real steps), weight decay {WD}; finite-difference radius 0.01/‖v‖ (the papers'); "
        f"numerical: central differences of the unrolled objective F written from scratch, "
        f"over every alpha entry (ReLU network) or along 16 random directions (smooth), "
        f"step h = {h:g}, checked against h = {h / 10:g} and {h2:g} along random directions "
        f"(a jump of F within reach of a step shows as a mismatch). "
        f"Time: {'; '.join(r['time'] for r in a_res)}."
    )
    table(
        "(a′) The same at the official DARTS code's fixture",
        ["network", "compared", "relative error ‖a−b‖/‖b‖", "cosine"],
        fix["rows"],
    )
    print(f"\nSettings: {fix['note']}.")
    table(
        "(a″) DARTS second order: finite_difference (r = 0.01/‖v‖) vs exact over seeds",
        ["network", "seed", "relative error ‖fd−exact‖/‖exact‖", "cosine"],
        pair_rows,
    )
    print("\nSettings: as (a), one network and batches per seed; `exact` is the reference "
          "(it equals the numerical derivative in (a)).")  # fmt: skip
    table(
        "(b) The paths the papers' chains leave out, against the terms they keep",
        ["scheme", "network", "seed", "‖left-out‖", "‖kept, same kind‖", "left-out / kept",
         "left-out / ‖whole exact‖", "cosine(full, exact chain)"],
        [r["row"] for r in b_res],
    )  # fmt: skip
    ratios: dict[str, list[tuple[int, float]]] = {}
    for r in b_res:
        ratios.setdefault(f"{r['row'][0]} {r['row'][1]}", []).append((r["row"][2], r["ratio"]))
    summary = "; ".join(
        f"{k}, seeds {v[0][0]}–{v[-1][0]}: {min(x for _, x in v):.3g}–{max(x for _, x in v):.3g}×"
        if len(v) > 1
        else f"{k}, seed {v[0][0]}: {v[0][1]:.3g}×"
        for k, v in ratios.items()
    )
    print(
        f"\nLeft-out = the gradient of the full objective (the architecture differentiable "
        f"everywhere it enters, written from scratch) − our `exact` (the papers' chain). "
        f"Kept, same kind: LeaSE's audience term gamma·grad_A L(W′) along A → E′ → Δ′ → W′ "
        f"(`audience_only=True`); SGL's cross-learner terms A_k → V′_k → p_k → W′_j "
        f"(`SglGrad.cross`). Left-out / kept: {summary}."
    )
    print(
        f"\nSettings: float64; the explainer and each SGL network: supernet C=2, 3 cells, "
        f"{steps} nodes, 10 classes, alphas 0.3·N(0,1); LeaSE's audience: conv(4)-BN-act-"
        f"pool-conv(4)-BN-act-avgpool-linear (ReLU/max-pool, or softplus/avg-pool when "
        f"smooth); batches of 4 8×8 images; every weight optimizer SGD lr = xi = {LR}, "
        f"momentum {MOMENTUM} (buffers from 2 real steps), wd {WD}; LeaSE gamma {GAMMA}, "
        f"xi_Delta {EXPL['lr']} (ascent), eps {EXPL['eps']}, kappa {EXPL['weight']}, Delta "
        f"uniform in ±{EXPL['init']}·eps; SGL K=2, lambda {LAMBDA}, 4 unlabeled images."
    )
    table(
        f"(c) Our `exact` modes against the papers' chains autograd-ed from scratch "
        f"(seed {args.seed})",
        ["scheme", "network", "compared", "relative error", "cosine", "bitwise equal"],
        [r["row"][:2] + row for r in b_res for row in r["rows_c"]],
    )
    print(
        "\nFrom scratch: torch.func.functional_call and the optimizers' steps written out, "
        "not mlonas.mlo.core. The numerical row checks the left-out part of (b) itself."
    )
    print(f"\nTotal {time.perf_counter() - t0:.0f} s (--jobs {args.jobs}).")


if __name__ == "__main__":
    main()
