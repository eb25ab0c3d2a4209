"""How much of B-DARTS' confident learning rate (CLR) survives Adam, per epoch.

CLR multiplies the architecture step by c = ((epoch + 1) / E) ** p. The authors' code does
it on Adam's lr in first order, and on the validation loss (hence the hypergradient) in
second order, where Adam's m / sqrt(v) normalisation divides most of a slowly varying scale
back out: what remains is the lag of sqrt(v) behind a growing c (beta2 = 0.999 remembers
~1000 steps), Adam's eps, and weight decay, which is added to the gradient unscaled.

This runs the same second-order (finite-difference) DARTS search three times with the same
data, seed and supernet: CLR off, CLR on the lr, CLR on the hypergradient. For each epoch
it prints c and the norm of that epoch's change of alpha, as the ratio to the run without
CLR, so a reader sees at once whether the hypergradient scaling does what the lr scaling
does (ratio ~ c) or is cancelled (ratio ~ 1).

    python benchmarks/clr_adam.py                       # 50 epochs x 20 steps, ~25 min
    python benchmarks/clr_adam.py --steps-per-epoch 98  # the papers' 25k / batch 256
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace


def main() -> None:
    import torch

    from mlonas.config import load_raw, search_settings
    from mlonas.search.bases import get_base
    from mlonas.search.common import SchemeSetup, StepBatch
    from mlonas.search.schemes import PlainScheme
    from mlonas.settings import PlainOptions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--steps-per-epoch", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    paper = search_settings(load_raw("params.yaml"), "darts-2nd")
    # A small supernet (the demo's size), the paper's optimizers and CLR settings.
    small = dict(init_channels=4, layers=3, steps=2, multiplier=2, epochs=args.epochs)
    runs = {
        "constant": replace(paper, **small),
        "lr": replace(paper, **small, arch_lr_schedule="confident", confidence_scales="lr"),
        "hypergradient": replace(
            paper, **small, arch_lr_schedule="confident", confidence_scales="hypergradient"
        ),
    }
    g = torch.Generator().manual_seed(0)
    n = args.steps_per_epoch * args.batch
    # labels from a fixed random linear teacher: the task has signal, so alpha has a
    # direction to move in
    x = torch.randn(2 * n, 3, 8, 8, generator=g)
    teacher = torch.randn(3 * 8 * 8, 10, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    base = get_base("darts")
    norms: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for name, s in runs.items():
        setup = SchemeSetup(
            base=base, settings=s, options=PlainOptions(), num_classes=10,
            mode="finite_difference", device=torch.device("cpu"), seed=0, n_train=n,
            image_shape=(3, 8, 8),
        )  # fmt: skip
        torch.manual_seed(0)
        scheme = PlainScheme(setup, {"model": base.initial_state(s)})
        arch = scheme.model.arch_parameters()
        norms[name] = []
        for epoch in range(args.epochs):
            scheme.start_epoch(epoch, base.lr(epoch, s))
            scheme.set_arch_confidence(base.arch_confidence(epoch, s))
            before = torch.cat([a.detach().flatten() for a in arch]).clone()
            for step in range(args.steps_per_epoch):
                i = slice(step * args.batch, (step + 1) * args.batch)
                j = slice(n + step * args.batch, n + (step + 1) * args.batch)
                batch = StepBatch(x[i], y[i], torch.arange(args.batch), (x[j], y[j]))
                scheme.step(batch, update_arch=True, epoch=epoch, step=step)
            after = torch.cat([a.detach().flatten() for a in arch])
            norms[name].append(float((after - before).norm()))
    wall = time.perf_counter() - t0

    s = runs["lr"]
    print(
        f"DARTS-2nd (finite difference), demo-size supernet, {args.epochs} epochs x "
        f"{args.steps_per_epoch} steps, batch {args.batch}, Adam lr {s.arch_lr} betas "
        f"{tuple(s.arch_betas)} wd {s.arch_weight_decay}; {wall:.0f} s\n"
    )
    print("| epoch | c | ‖Δα‖ no CLR | ratio, CLR on lr | ratio, CLR on hypergradient |")
    print("|---|---|---|---|---|")
    shown = sorted({0, 1, 2, 4, 9, 14, 19, 24, 29, 34, 39, 44, args.epochs - 1})
    for e in (e for e in shown if e < args.epochs):
        c = base.arch_confidence(e, s)
        ref = norms["constant"][e]
        print(
            f"| {e + 1} | {c:.4g} | {ref:.3e} | {norms['lr'][e] / ref:.4f} |"
            f" {norms['hypergradient'][e] / ref:.4f} |"
        )
    total = {k: sum(v) for k, v in norms.items()}
    mean_c = sum(base.arch_confidence(e, s) for e in range(args.epochs)) / args.epochs
    print(
        f"\nwhole search, Σ‖Δα‖ relative to no CLR: lr {total['lr'] / total['constant']:.3f},"
        f" hypergradient {total['hypergradient'] / total['constant']:.3f}"
        f" (mean c = {mean_c:.3f})"
    )


if __name__ == "__main__":
    main()
