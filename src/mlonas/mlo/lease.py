"""The LeaSE hypergradient (learning by self-explanation; Hosseini & Xie 2021, Eqs. 6-17).

Four levels, one unrolled step each, at the current explainer weights E, explanations
Delta (of the batch's examples), audience weights W and explainer architecture A:

1. E'      = E - xi_e (grad_E L(E, A, D_e^tr) + ...)                        (Eq. 6)
2. Delta'  = P(Delta + s xi_D grad_Delta O_D(Delta, E'))                     (Eq. 7)
             O_D = sum_i l(f(x_i + delta_i; E'), f(x_i; E')), s = +1 (ascent) / -1
3. W'      = W - xi_w (grad_W O_W(W, Delta') + ...)                          (Eq. 8)
             O_W = mean_i l(g(m(x_i, delta'_i); W), t_i)
4. grad_A [L(E', A, D_e^val) + gamma L(W', D_a^val)]                         (Eq. 9)

The second term's chain is the paper's A -> E' -> Delta' -> W' (Eqs. 12-17): the
explainer network f in O_D is "f(.; E')", so A reaches Delta' only through E' (the
architecture inside the attack's forward passes is held constant, in every mode, so that
``exact`` and ``finite_difference`` compute the same quantity).

``finite_difference`` evaluates the chain right to left with vector products, each mixed
second derivative by a central difference with radius eps / ||vector|| (Eq. 11):

    u_W = grad_W' L(W', D_a^val)
    u_D = -xi_w  grad^2_{Delta,W} O_W(W, Delta') u_W          (Eqs. 12-13; FD in W)
    u_D = u_D * [|Delta'| inside the projection]              (the projection's Jacobian)
    u_E = s xi_D grad^2_{E',Delta} O_D(Delta, E') u_D          (Eqs. 14-15; FD in Delta)
    grad = grad_A L(E', A, D_e^val) - xi_e grad^2_{A,E} L(E, A, D_e^tr) (v_E + gamma u_E)

The last product is the one DARTS-2nd computes for its own term (Eqs. 10-11, 16-17); by
linearity the two terms share one central difference, so gamma = 0 gives exactly the
DARTS-2nd gradient. ``exact`` differentiates the same unrolled steps with autograd;
``first_order`` treats E', Delta', W' as constants, which leaves grad_A L(E, A, D_e^val):
W does not depend on A when the inner solutions are constants (LeaSE-1st = DARTS-1st).

How an explanation enters (the paper leaves it open; see :class:`Explanations`): the
attack perturbs x_i + delta_i, and the audience sees the pixels reweighted by how much they
were perturbed, m(x, delta) = x * (1 + kappa (delta / eps)^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlonas.mlo.core import (
    Batch,
    Functional,
    LossFn,
    VirtualStep,
    central_difference,
    requiring_grad,
    soft_cross_entropy,
)
from mlonas.mlo.darts import check_mode, first_order_term, unroll, unroll_graph, with_implicit_term


@dataclass(frozen=True)
class Explanations:
    """How the explanations Delta are updated and how the audience uses them.

    - ``lr`` (xi_Delta) and ``direction``: Delta' = Delta + direction * lr * grad O_D.
      ``+1`` ascends the attack loss, as Eq. 2 (a maximization, "adversarial attack")
      defines it; ``-1`` is the descent step Eq. 7 prints.
    - ``eps``: after each step Delta is projected onto the L-inf ball of radius eps, as in
      a PGD attack, so explanations stay perturbations (and the audience's weights bounded).
    - ``weight`` (kappa): the audience trains on x * (1 + kappa (delta/eps)^2). The paper's
      literal delta * x would feed the audience images scaled down to the size of an
      adversarial perturbation (nothing like the validation images it is judged on); this
      keeps every pixel and up-weights, by up to 1 + kappa, the pixels the attack moved
      most, which is the paper's stated intent ("pixels that are more important are given
      more weights"). Smooth in delta, so the chain rule of Eqs. 12-13 applies.
    """

    lr: float
    direction: float = 1.0
    eps: float = 0.125
    weight: float = 1.0

    def attack_loss(
        self,
        f: Functional,
        weights: list[torch.Tensor],
        alphas: list[torch.Tensor],
        x: torch.Tensor,
        delta: torch.Tensor,
    ) -> torch.Tensor:
        """O_D = sum_i l(f(x_i + delta_i), f(x_i)), summed over the batch (Eq. 2) so a
        step's size per example does not depend on the batch size."""
        target = torch.softmax(f.logits(weights, alphas, x), dim=1)
        return soft_cross_entropy(f.logits(weights, alphas, x + delta), target).sum()

    def step(self, delta: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projected Delta', mask of the entries inside the ball = d Delta'/d pre-step)."""
        pre = delta + self.direction * self.lr * grad
        return pre.clamp(-self.eps, self.eps), (pre.abs() < self.eps).to(pre.dtype)

    def audience_input(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return x * (1.0 + self.weight * (delta / self.eps) ** 2)


@dataclass
class LeaseGrad:
    """Architecture gradient (one tensor per explainer alpha) and the losses it came from."""

    grads: list[torch.Tensor]
    explainer_val_loss: torch.Tensor
    audience_val_loss: torch.Tensor | None


def lease_arch_grad(
    explainer: nn.Module,
    audience: nn.Module,
    loss_fn: LossFn,
    train_batch: Batch,
    val_batch: Batch,
    x_plain: torch.Tensor,
    delta: torch.Tensor,
    explanations: Explanations,
    *,
    mode: str = "finite_difference",
    gamma: float = 1.0,
    e_step: VirtualStep | None = None,
    w_step: VirtualStep | None = None,
    eps: float = 0.01,
    audience_only: bool = False,
) -> LeaseGrad:
    """grad_A of LeaSE's objective (Eq. 9) at the models' current weights.

    ``train_batch`` trains E (it may be augmented); ``x_plain`` are the same images without
    augmentation, to which the explanations ``delta`` (their rows of Delta) belong; the
    audience trains on them with ``train_batch``'s labels. D_e^val = D_a^val =
    ``val_batch``. ``e_step`` / ``w_step`` replay the explainer's / audience's optimizer.
    ``audience_only`` returns gamma * grad_A L(W', D_a^val) alone (for tests and
    diagnostics).
    """
    check_mode(mode, e_step)
    if mode != "first_order":
        check_mode(mode, w_step)
    fe, fa = Functional(explainer, loss_fn), Functional(audience, loss_fn)
    alphas = [a.detach().requires_grad_(True) for a in fe.alphas]
    a_const = [a.detach() for a in fe.alphas]
    y = train_batch[1]
    if mode == "first_order":
        grads, le = first_order_term(fe, alphas, val_batch)
        if audience_only:
            grads = [torch.zeros_like(g) for g in grads]
        return LeaseGrad(grads, le, None)
    assert e_step is not None and w_step is not None
    if mode == "exact":
        e1 = unroll_graph(fe, alphas, train_batch, e_step)
        d_req = delta.detach().clone().requires_grad_(True)
        attack = explanations.attack_loss(fe, e1, a_const, x_plain, d_req)
        g_d = torch.autograd.grad(attack, d_req, create_graph=True)[0]
        d1, _ = explanations.step(d_req, g_d)
        w_req = requiring_grad(fa.weights)
        o_w = fa.loss(w_req, [], (explanations.audience_input(x_plain, d1), y))
        g_w = torch.autograd.grad(o_w, w_req, create_graph=True)
        la = fa.loss(w_step.apply(w_req, g_w), [], val_batch)
        le = fe.loss(e1, alphas, val_batch)
        total = gamma * la if audience_only else le + gamma * la
        return LeaseGrad(list(torch.autograd.grad(total, alphas)), le.detach(), la.detach())

    # -- finite_difference ---------------------------------------------------------------
    e1, le, direct, v_e = unroll(fe, alphas, train_batch, val_batch, e_step)
    # Delta' (Eq. 7) and W' (Eq. 8), constants from here on
    d0 = delta.detach()
    d_tmp = d0.clone().requires_grad_(True)
    g_d = torch.autograd.grad(explanations.attack_loss(fe, e1, a_const, x_plain, d_tmp), d_tmp)
    d1, inside = explanations.step(d0, g_d[0])
    d1 = d1.requires_grad_(True)
    w0 = fa.detached_weights()
    w_tmp = requiring_grad(w0)
    audience_batch = (explanations.audience_input(x_plain, d1.detach()), y)
    g_w = torch.autograd.grad(fa.loss(w_tmp, [], audience_batch), w_tmp)
    w1 = requiring_grad(w_step.apply(w0, g_w))
    la = fa.loss(w1, [], val_batch)
    u_w = list(torch.autograd.grad(la, w1))

    def delta_grad(w: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        inp = explanations.audience_input(x_plain, d1)
        return torch.autograd.grad(fa.loss(w, [], (inp, y)), [d1])

    hv_d = central_difference(delta_grad, w0, u_w, eps)
    u_e: list[torch.Tensor] | None = None
    if hv_d is not None:
        u_d = -w_step.lr * hv_d[0] * inside

        def explainer_grad(d: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
            attack = explanations.attack_loss(fe, e1, a_const, x_plain, d[0])
            return torch.autograd.grad(attack, e1)

        hv_e = central_difference(explainer_grad, [d0], [u_d], eps)
        if hv_e is not None:
            u_e = [explanations.direction * explanations.lr * h for h in hv_e]
    grads = with_implicit_term(
        fe, alphas, train_batch, e_step, direct, v_e, u_e, gamma=gamma, eps=eps,
        extra_only=audience_only,
    )  # fmt: skip
    return LeaseGrad(grads, le, la.detach())
