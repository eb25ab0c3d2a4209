"""Where along LeaSE's chain A -> E' -> Delta' -> W' the finite differences lose accuracy.

The finite_difference mode evaluates the audience term as three vector products, each by a
central difference (mlonas.mlo.lease). On a ReLU/max-pool network a central difference
straddles kinks that autograd's one-sided derivatives do not see, and errors compound
along the chain. This script takes one batch, computes each link's product both ways for
the *same* input vector, and prints their relative error and cosine, plus the norm of the
vectors passed along (the FD radius is eps / ||vector||):

    u_D  = -xi_w  grad^2_{Delta,W} O_W  u_W        (audience, FD in W)
    u_E  = s xi_D grad^2_{E',Delta} O_D  u_D        (explainer attack, FD in Delta)
    g_A  = -xi_e  grad^2_{A,E} L_tr      u_E        (explainer training, FD in E)

    python benchmarks/lease_chain.py --size demo
    python benchmarks/lease_chain.py --size paper --device cuda
"""

from __future__ import annotations

import argparse

import torch

R18 = {"blocks": [2, 2, 2, 2], "width": 64}  # the papers' ResNet-18 audience
# the demo's supernet, its audience at ResNet width 64 as when docs/hypergradients.md's
# demo-size figures were measured (the demo preset's audience is 8 wide since)
R10 = {"blocks": [1, 1, 1, 1], "width": 64}
SIZES = {
    "demo": dict(init_channels=4, layers=3, steps=2, multiplier=2, batch=32, image=16, **R10),
    "medium": dict(init_channels=8, layers=5, steps=4, multiplier=4, batch=32, image=32, **R18),
    "paper": dict(init_channels=16, layers=8, steps=4, multiplier=4, batch=64, image=32, **R18),
}


def main() -> None:
    from mlonas.mlo.core import Functional, VirtualStep, central_difference, norm, requiring_grad
    from mlonas.mlo.lease import Explanations
    from mlonas.space.audience import AudienceResNet
    from mlonas.space.supernet import Supernet, SupernetSpec

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=list(SIZES), default="demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eps", type=float, nargs="*", default=[0.01, 0.1, 1.0])
    p.add_argument("--double", action="store_true", help="float64 (rounding out of the picture)")
    p.add_argument(
        "--smooth",
        action="store_true",
        help="softplus/average-pool networks (kinks out of the picture): the links must agree",
    )
    args = p.parse_args()
    z = SIZES[args.size]
    dev = torch.device(args.device)
    dtype = torch.float64 if args.double else torch.float32
    torch.manual_seed(0)
    spec = SupernetSpec(
        z["init_channels"], 10, z["layers"], z["steps"], z["multiplier"], smooth=args.smooth
    )
    explainer = Supernet(spec).to(dev, dtype).train()
    audience = AudienceResNet(z["blocks"], 10, z["width"]).to(dev, dtype).train()
    if args.smooth:  # torchvision's BasicBlock calls its ReLU modules: swap them
        for m in audience.modules():
            for name, child in m.named_children():
                if isinstance(child, torch.nn.ReLU):
                    setattr(m, name, torch.nn.Softplus())
    b, s = z["batch"], z["image"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, s, s, generator=g).to(dev, dtype)
    y = torch.randint(0, 10, (b,), generator=g).to(dev)
    xv = torch.randn(b, 3, s, s, generator=g).to(dev, dtype)
    yv = torch.randint(0, 10, (b,), generator=g).to(dev)
    expl = Explanations(lr=10.0, eps=0.125, weight=1.0)
    delta = ((torch.rand(b, 3, s, s, generator=g) * 2 - 1) * 0.0625).to(dev, dtype)
    crit = torch.nn.CrossEntropyLoss()
    fe, fa = Functional(explainer, crit), Functional(audience, crit)
    a_const = [a.detach() for a in fe.alphas]
    step = VirtualStep(0.025, 0.0, 3e-4)
    # the unrolled point
    e0 = fe.detached_weights()
    t = requiring_grad(e0)
    e1 = requiring_grad(step.apply(e0, torch.autograd.grad(fe.loss(t, a_const, (x, y)), t)))
    d_tmp = delta.clone().requires_grad_(True)
    gd = torch.autograd.grad(expl.attack_loss(fe, e1, a_const, x, d_tmp), d_tmp)[0]
    d1, inside = expl.step(delta, gd)
    d1 = d1.requires_grad_(True)
    w0 = fa.detached_weights()
    t = requiring_grad(w0)
    gw = torch.autograd.grad(fa.loss(t, [], (expl.audience_input(x, d1.detach()), y)), t)
    w1 = requiring_grad(step.apply(w0, gw))
    u_w = list(torch.autograd.grad(fa.loss(w1, [], (xv, yv)), w1))

    def flat(ts):
        return torch.cat([q.reshape(-1) for q in ts])

    def compare(name, fd, ex, vec):
        f, e = flat(fd), flat(ex)
        rel = float((f - e).norm() / e.norm())
        cos = float(f @ e / (f.norm() * e.norm()))  # no eps clamp: the norms can be ~1e-9
        print(
            f"  {name:<5} ||in|| {norm(vec):.3e}  ||exact|| {float(e.norm()):.3e}"
            f"  rel {rel:.3e}  cos {cos:.4f}"
        )

    # exact link products (double backward), then FD with several radii
    def delta_grad(w):
        return torch.autograd.grad(fa.loss(w, [], (expl.audience_input(x, d1), y)), [d1])

    w_req = requiring_grad(w0)
    gw_graph = torch.autograd.grad(
        fa.loss(w_req, [], (expl.audience_input(x, d1), y)), w_req, create_graph=True
    )
    dot = sum((a * v).sum() for a, v in zip(gw_graph, u_w, strict=True))
    u_d_exact = -step.lr * torch.autograd.grad(dot, d1)[0] * inside

    def e_grad(d):
        return torch.autograd.grad(expl.attack_loss(fe, e1, a_const, x, d[0]), e1)

    d_req = delta.clone().requires_grad_(True)
    ge_graph = torch.autograd.grad(
        expl.attack_loss(fe, e1, a_const, x, d_req), d_req, create_graph=True
    )[0]
    u_e_exact = [expl.lr * q for q in torch.autograd.grad((ge_graph * u_d_exact).sum(), e1)]
    alphas = [a.detach().requires_grad_(True) for a in fe.alphas]

    def a_grad(e):
        return torch.autograd.grad(fe.loss(e, alphas, (x, y)), alphas)

    e_req = requiring_grad(e0)
    g_graph = torch.autograd.grad(fe.loss(e_req, alphas, (x, y)), e_req, create_graph=True)
    dot = sum((a * v).sum() for a, v in zip(g_graph, u_e_exact, strict=True))
    g_a_exact = [-step.lr * q for q in torch.autograd.grad(dot, alphas)]
    print(
        f"LeaSE chain, size={args.size} {z}, device={args.device}, {dtype},"
        f" {'smooth' if args.smooth else 'ReLU/max-pool'}; "
        f"share of clipped explanations {1 - float(inside.mean()):.3f}"
    )
    for eps in args.eps:
        print(f"eps numerator {eps}:")
        u_d = [-step.lr * central_difference(delta_grad, w0, u_w, eps)[0] * inside]
        compare("u_D", u_d, [u_d_exact], u_w)
        u_e = [expl.lr * q for q in central_difference(e_grad, [delta], [u_d_exact], eps)]
        compare("u_E", u_e, u_e_exact, [u_d_exact])
        g_a = [-step.lr * q for q in central_difference(a_grad, e0, u_e_exact, eps)]
        compare("g_A", g_a, g_a_exact, u_e_exact)


if __name__ == "__main__":
    main()
