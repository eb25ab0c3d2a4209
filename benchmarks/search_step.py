"""Time one search step and its peak memory for each base x order; print one table.

A step is what the search loop does per batch: the architecture step (hypergradient in
the method's mode) and then the weight step. Each configuration runs in a fresh process
so peak memory is its own (CPU: peak RSS growth over the process after start-up and data
creation; CUDA: ``torch.cuda.max_memory_allocated``). The median is over ``--steps``
timed steps after ``--warmup`` untimed ones. The last column compares the
finite-difference hypergradient with exact autograd on the same batch (relative L2 error
and cosine): on the real ReLU/max-pool supernet they are different estimators.

    python benchmarks/search_step.py --size demo
    python benchmarks/search_step.py --size paper --steps 3 --warmup 1   # GPU-sized
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

SIZES = {
    # demo preset: C=4, 3 cells, 2 nodes, batch 32, 16x16
    "demo": {
        "init_channels": 4,
        "layers": 3,
        "steps": 2,
        "multiplier": 2,
        "batch_size": 32,
        "image_size": 16,
    },
    # the papers' search: C=16, 8 cells, 4 nodes, batch 64, 32x32 (DARTS section 3.1.1)
    "paper": {
        "init_channels": 16,
        "layers": 8,
        "steps": 4,
        "multiplier": 4,
        "batch_size": 64,
        "image_size": 32,
    },
}
CONFIGS = [
    ("darts", "first", "first_order"),
    ("darts", "second", "finite_difference"),
    ("darts", "second", "exact"),
    ("pcdarts", "first", "first_order"),
    ("pdarts", "first", "first_order"),
    ("darts_minus", "first", "first_order"),
]
# Base options at the papers' settings; P-DARTS is timed on its first-stage network.
BASE_SETTINGS = {
    "pcdarts": {"partial_channels": 4},
    "pdarts": {
        "stage_layers": [5, 11, 17],
        "stage_ops": [8, 5, 3],
        "stage_skip_dropout": [0.1, 0.4, 0.7],
        "max_skip_normal": 2,
    },
}


def worker(args: argparse.Namespace) -> None:
    import torch

    from mlonas.mlo import VirtualStep, darts_arch_grad
    from mlonas.search.bases import get_base
    from mlonas.search.schemes import SCHEMES

    size = SIZES[args.size]
    dev = torch.device(args.device)
    settings = {
        **size,
        "stem_multiplier": 3,
        "lr": 0.025,
        "lr_min": 0.001,
        "momentum": 0.9,
        "weight_decay": 3e-4,
        "grad_clip": 5.0,
        "arch_lr": 3e-4,
        "arch_betas": [0.5, 0.999],
        "arch_weight_decay": 1e-3,
        "unrolled_mode": args.mode,
        "fd_eps": 0.01,
        "epochs": 1,
        **BASE_SETTINGS.get(args.base, {}),
    }
    if args.size == "demo" and args.base == "pcdarts":
        settings["init_channels"] = 8  # 4 channels cannot be split into K=4 for reductions
    torch.manual_seed(0)
    base = get_base(args.base)
    states = {"model": base.initial_state(settings)}
    scheme = SCHEMES["plain"](base, settings, 10, args.mode, dev, 0, states)
    b, s = size["batch_size"], size["image_size"]
    g = torch.Generator().manual_seed(0)
    batch = lambda: (torch.randn(b, 3, s, s, generator=g), torch.randint(0, 10, (b,), generator=g))  # noqa: E731
    batches = [(batch(), batch()) for _ in range(args.warmup + args.steps)]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i, (tb, vb) in enumerate(batches):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        scheme.step(tb, vb, update_arch=True, epoch=0, step=i)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    gap = {}
    if args.mode != "first_order" and not args.no_gap:  # FD vs exact on one batch
        (x, y), (xv, yv) = batches[0]
        step = VirtualStep.from_optimizer(scheme.w_opt)
        crit = torch.nn.CrossEntropyLoss()
        tb, vb = (x.to(dev), y.to(dev)), (xv.to(dev), yv.to(dev))
        fd, _ = darts_arch_grad(scheme.model, crit, tb, vb, mode="finite_difference", step=step)
        ex, _ = darts_arch_grad(scheme.model, crit, tb, vb, mode="exact", step=step)
        f = torch.cat([t.flatten() for t in fd])
        e = torch.cat([t.flatten() for t in ex])
        gap = {
            "rel": float((f - e).norm() / e.norm()),
            "cos": float(torch.nn.functional.cosine_similarity(f, e, dim=0)),
        }
    print(json.dumps({"median_s": statistics.median(times), "peak_mb": peak_mb, "gap": gap}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="demo")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker", nargs=3, metavar=("BASE", "ORDER", "MODE"))
    parser.add_argument(
        "--no-gap",
        action="store_true",
        help="do not compare FD with exact (exact needs 2-3x the memory of FD)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="BASE:MODE",
        help="leave a configuration out, e.g. darts:exact (memory)",
    )
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        args.base, _, args.mode = args.worker
        worker(args)
        return
    print(
        f"search step, size={args.size} ({SIZES[args.size]}), device={args.device}, "
        f"median of {args.steps} after {args.warmup} warm-up"
    )
    header = ("base", "order", "mode", "step s", "peak MB", "FD vs exact")
    print(
        f"{header[0]:<12} {header[1]:<7} {header[2]:<18} {header[3]:>8} {header[4]:>9} "
        f"{header[5]:>22}"
    )
    for base, order, mode in CONFIGS:
        if f"{base}:{mode}" in args.skip:
            print(f"{base:<12} {order:<7} {mode:<18} {'skipped (--skip)':>40}")
            continue
        out = (
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--size",
                    args.size,
                    "--device",
                    args.device,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    *(["--no-gap"] if args.no_gap else []),
                    "--worker",
                    base,
                    order,
                    mode,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        r = json.loads(out)
        gap = f"rel {r['gap']['rel']:.3f} cos {r['gap']['cos']:.3f}" if r["gap"] else "—"
        print(
            f"{base:<12} {order:<7} {mode:<18} {r['median_s']:>8.3f} {r['peak_mb']:>9.0f} {gap:>22}"
        )


if __name__ == "__main__":
    main()
