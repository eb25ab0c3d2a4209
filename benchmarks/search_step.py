"""Time one search step and its peak memory for each scheme x base x order; print one table.

A step is what the search loop does per batch: the architecture step (hypergradient in
the method's mode) and then the weight steps (LeaSE: explainer, explanations, audience;
SGL: every learner's two weight sets; LBT: teacher, student).
Each configuration runs in a fresh process so peak
memory is its own (CPU: peak RSS growth over the process after start-up and data
creation; CUDA: ``torch.cuda.max_memory_allocated``). The median is over ``--steps``
timed steps after ``--warmup`` untimed ones. The "FD vs exact" column compares the
finite-difference hypergradient with exact autograd on the same batch (relative L2 error
and cosine): on the real ReLU/max-pool supernet they are different estimators. For LeaSE
the last column is the share of the audience term, ||gamma grad_A L(W')|| / ||grad_A||;
for SGL the share of the cross-learner terms, for LBT the student term's (second order only).
IL (an interpretation): K = the heads, params.yaml's rounds R; its step is R*K virtual stages
and K weight steps.

``--official-darts`` times the official DARTS code (quark0/darts: ``Network`` from
cnn/model_search.py, ``Architect`` from cnn/architect.py, extracted from the mirror at run
time, never copied here) beside ours at the same size and batch: per batch what the
official train_search.py does (``architect.step``, then the weight step with gradient
clipping), first order (``unrolled=False``) and second order (``unrolled=True``), against
ours with darts first_order and finite_difference. The 2018 code runs on torch 2.x with
one shim: on a CPU run ``.cuda()`` is the identity (it calls it on the model, the alphas
and the unrolled copy); its deprecated ``add_(Number, Tensor)`` overloads still work.

``--compile`` (CUDA only) also times each configuration with the supernets compiled
(``torch.compile`` of their forward, hence forward and backward; mode ``reduce-overhead``
= CUDA graphs by default), falling back to eager with the reason where compilation fails.

    python benchmarks/search_step.py --size demo
    python benchmarks/search_step.py --size paper --steps 3 --warmup 1   # GPU-sized
    python benchmarks/search_step.py --size paper --official-darts --threads 2 --steps 3 --warmup 1
    python benchmarks/search_step.py --size paper --only plain --no-gap --compile   # CUDA

``--mask KIND --keep K`` times the step on a pruned space (half search space, mlonas.space.
zeroshot): each edge keeps K of the base's ops other than ``none``, chosen by ``etenas``
(the pruner of the halfspace method, run here on random stand-in images: CIFAR is not
needed for a memory measurement, which depends only on which ops are kept), ``cheapest``
or ``priciest`` (the ops saving the fewest/most bytes for backward at the size, measured
with saved-tensor hooks), ``random:SEED``, or ``file:PATH`` (a JSON with edge_ops_normal
and edge_ops_reduce, e.g. a search's alphas.json ``prune`` entry). ``--halfspace`` prints
the table of docs/halfspace.md: plain darts, first order and second order (finite
difference), full space vs each mask, and 1 - pruned/full of the peak memory.

    python benchmarks/search_step.py --size paper --halfspace --threads 1 --steps 1 --warmup 0

``--record`` appends each measured step to mlonas' step-time table
(src/mlonas/report/step_times.csv, with the device, date and commit), which ``mlonas plan``
turns into device-hours; ``--weights-only`` times a warm-up epoch's step (PC-DARTS, P-DARTS:
no architecture step) and ``--stage N`` a later P-DARTS stage (deeper supernet, pruned ops).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DARTS_MIRROR = Path("/work/.mirror/quark0+darts")
OFFICIAL_FILES = ("model_search.py", "architect.py", "operations.py", "genotypes.py", "utils.py")

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
    # the issue-13 side-by-side size: C=8, 5 cells, 4 nodes, batch 32, 32x32
    "small": {
        "init_channels": 8,
        "layers": 5,
        "steps": 4,
        "multiplier": 4,
        "batch_size": 32,
        "image_size": 32,
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
# (scheme, base, order, mode, learners)
CONFIGS = [
    ("plain", "darts", "first", "first_order", 1),
    ("plain", "darts", "second", "finite_difference", 1),
    ("plain", "darts", "second", "exact", 1),
    ("plain", "pcdarts", "first", "first_order", 1),
    ("plain", "pdarts", "first", "first_order", 1),
    ("plain", "darts_minus", "first", "first_order", 1),
    ("lease", "darts", "second", "finite_difference", 1),
    ("lease", "darts", "second", "exact", 1),
    ("sgl", "darts", "first", "first_order", 2),
    ("sgl", "darts", "first", "first_order", 3),
    ("sgl", "darts", "first", "first_order", 4),
    ("sgl", "darts", "second", "finite_difference", 2),
    ("sgl", "darts", "second", "exact", 2),
    ("sgl", "pcdarts", "first", "first_order", 2),
    ("sgl", "pdarts", "first", "first_order", 2),
    ("sgl", "darts_minus", "first", "first_order", 2),
    ("il", "darts", "first", "first_order", 2),
    ("il", "darts", "second", "finite_difference", 2),
    ("il", "darts", "second", "exact", 2),
    ("lbt", "darts", "second", "finite_difference", 1),
    ("lbt", "darts", "second", "exact", 1),
]
# LeaSE's audience per size: the demo preset's (one block per stage, 8 wide) / ResNet-18
AUDIENCE = {
    "demo": {"audience_blocks": [1, 1, 1, 1], "audience_width": 8},
    "paper": {"audience_blocks": [2, 2, 2, 2], "audience_width": 64},
}
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


def params() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


def options(args: argparse.Namespace) -> dict:
    """params.yaml's scheme options (the lease block with the size's audience, the lbt block
    with the same network as its student)."""
    raw = params()["schemes"]
    if args.scheme == "lease":
        return {**raw["lease"], **AUDIENCE[args.size]}
    if args.scheme == "sgl":
        return {**raw["sgl"], "learners": args.learners}
    if args.scheme == "il":  # K heads (the K column), params.yaml's rounds
        return {**raw["il"], "models": args.learners}
    if args.scheme == "lbt":  # LBT's student: the same network per size as LeaSE's audience
        student = {f"student_{k.split('_')[1]}": v for k, v in AUDIENCE[args.size].items()}
        return {**raw["lbt"], **student}
    return {}


def worker(args: argparse.Namespace) -> None:
    import torch

    from mlonas.mlo import VirtualStep
    from mlonas.mlo.lbt import lbt_arch_grad
    from mlonas.mlo.lease import lease_arch_grad
    from mlonas.mlo.sgl import sgl_arch_grad
    from mlonas.search.bases import get_base
    from mlonas.search.common import SchemeSetup, StepBatch
    from mlonas.search.schemes import SCHEMES
    from mlonas.settings import SCHEME_OPTIONS, SearchSettings

    size = SIZES[args.size]
    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # params.yaml's shared search settings (optimizers, fd_eps, BN statistics, schedule),
    # at the size and mode being timed
    values = {
        **params()["search"],
        **size,
        "unrolled_mode": args.mode,
        "epochs": 1,
        **BASE_SETTINGS.get(args.base, {}),
    }
    if args.size == "demo" and args.base == "pcdarts":
        values["init_channels"] = 8  # 4 channels cannot be split into K=4 for reductions
    if args.size == "demo" and args.base == "pdarts":  # the demo preset's shallower stages
        values["stage_layers"] = params()["presets"]["demo"]["methods"]["pdarts"]["search"][
            "stage_layers"
        ]
    torch.manual_seed(0)
    base = get_base(args.base)
    cls = SCHEMES[args.scheme]
    values.pop("image_size")  # the data's size, not a search setting
    settings = SearchSettings.from_params(values, "benchmarks/search_step.py", "search")
    opts = options(args)
    typed = SCHEME_OPTIONS[args.scheme].from_params(opts, "benchmarks/search_step.py", "options")
    b, s = size["batch_size"], size["image_size"]
    setup = SchemeSetup(base, settings, typed, 10, args.mode, dev, 0, b, (3, s, s))
    initial = base.initial_state(settings)
    if args.mask:  # half search space: the pruned ops instead of the full space
        initial = {**initial, **mask_state(args, base.primitives, settings)}
    scheme = cls(setup, {n: dict(initial) for n in cls.architecture_names(typed)})
    for stage in range(1, args.stage + 1 if base.progressive else 1):  # P-DARTS' stage change
        states = {n: base.next_state(m, stage, settings) for n, m in scheme.architectures().items()}
        scheme = cls(setup, states)
    g = torch.Generator().manual_seed(0)

    def batch() -> StepBatch:
        x = torch.randn(b, 3, s, s, generator=g)
        y = torch.randint(0, 10, (b,), generator=g)
        val = (torch.randn(b, 3, s, s, generator=g), torch.randint(0, 10, (b,), generator=g))
        u = torch.randn(b, 3, s, s, generator=g)
        return StepBatch(x, y, torch.arange(b), val, x_plain=x, unlabeled=u).to(dev)

    compiled = compile_modules(scheme, args.compile) if args.compile else ""
    batches = [batch() for _ in range(args.warmup + args.steps)]
    arch = not args.weights_only
    times, peak_mb, failed = timed(
        dev, batches, args.warmup, lambda i, bt: scheme.step(bt, update_arch=arch, epoch=0, step=i)
    )
    if failed:  # compilation failed at run time: eager, with the reason
        torch._dynamo.reset()
        for mod in modules_of(scheme):
            mod._compiled_call_impl = None
        times, peak_mb, _ = timed(
            dev, batches, args.warmup,
            lambda i, bt: scheme.step(bt, update_arch=arch, epoch=0, step=i),
        )  # fmt: skip
        compiled = f"fell back to eager: {failed}"
    gap: dict[str, float] = {}
    if args.mode != "first_order" and not args.no_gap and not args.weights_only:  # FD vs exact
        bt, crit = batches[0], torch.nn.CrossEntropyLoss()
        flat = lambda ts: torch.cat([t.flatten() for t in ts])  # noqa: E731
        share = None
        if args.scheme == "plain":
            step = VirtualStep.from_optimizer(scheme.w_opt)
            fd, ex = (darts_grad(scheme, crit, bt, m, step) for m in ("finite_difference", "exact"))
        elif args.scheme == "lease":
            kw = {
                "e_step": VirtualStep.from_optimizer(scheme.e_opt),
                "w_step": VirtualStep.from_optimizer(scheme.w_opt),
                "gamma": opts["gamma"],
            }
            run = lambda m, **more: lease_arch_grad(  # noqa: E731
                scheme.explainer, scheme.audience, crit, (bt.x, bt.y), bt.val, bt.x_plain,
                scheme.delta[: bt.x.size(0)], scheme.explanations, mode=m, **kw, **more,
            ).grads  # fmt: skip
            fd, ex = run("finite_difference"), run("exact")
            share = float(flat(run("exact", audience_only=True)).norm() / flat(ex).norm())
        elif args.scheme == "il":
            fd, ex = (scheme.arch_grad(bt, m).grads for m in ("finite_difference", "exact"))
        elif args.scheme == "lbt":
            kw = {
                "t_step": VirtualStep.from_optimizer(scheme.t_opt),
                "s_step": VirtualStep.from_optimizer(scheme.s_opt),
                "gamma": opts["gamma"],
                "lam": opts["lambda"],
            }
            run = lambda m, **more: lbt_arch_grad(  # noqa: E731
                scheme.teacher, scheme.student, crit, (bt.x, bt.y), bt.val, bt.unlabeled,
                mode=m, **kw, **more,
            ).grads  # fmt: skip
            fd, ex = run("finite_difference"), run("exact")
            share = float(flat(run("exact", student_only=True)).norm() / flat(ex).norm())
        else:
            kw = {
                "v_steps": [VirtualStep.from_optimizer(o) for o in scheme.v_opts],
                "w_steps": [VirtualStep.from_optimizer(o) for o in scheme.w_opts],
                "lam": opts["lambda"],
            }
            run = lambda m: sgl_arch_grad(  # noqa: E731
                scheme.learners, crit, (bt.x, bt.y), bt.val, bt.unlabeled, mode=m, **kw
            )
            rf, rx = run("finite_difference"), run("exact")
            fd, ex = [t for g in rf.grads for t in g], [t for g in rx.grads for t in g]
            share = float(flat([t for c in rx.cross for t in c]).norm() / flat(ex).norm())
        f, e = flat(fd), flat(ex)
        gap = {
            "rel": float((f - e).norm() / e.norm()),
            "cos": float(f @ e / (f.norm() * e.norm())),
        }
        if share is not None:
            gap["share"] = share
    from mlonas.report.plan import search_step_key

    key = search_step_key(
        args.scheme,
        args.base,
        "weights_only" if args.weights_only else args.mode,
        settings,
        typed,
        s,
        args.stage,
    )
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    out = {"median_s": statistics.median(times), "peak_mb": peak_mb, "gap": gap}
    out |= {"key": dataclasses.asdict(key), "device_name": name}
    print(json.dumps(out | {"threads": torch.get_num_threads(), "compiled": compiled}))


def op_saved_bytes(name: str, channels: int, size: int) -> int:
    """Bytes an op (as the search supernet runs it, stride 1) saves for its backward on a
    batch of 2: the storages its autograd graph keeps, each counted once."""
    import torch

    from mlonas.space.supernet import search_op

    op = search_op(name, channels, 1, smooth=False).train()
    x = torch.randn(2, channels, size, size, requires_grad=True)
    seen: dict[int, int] = {}

    def pack(t):  # type: ignore[no-untyped-def]
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        op(x)
    return sum(seen.values())


def mask_ops(args: argparse.Namespace, primitives, settings) -> dict:  # type: ignore[no-untyped-def]
    """{edge_ops_normal, edge_ops_reduce} of ``--mask`` keeping ``--keep`` ops per edge."""
    import numpy as np

    from mlonas.space.genotype import num_edges

    kind, _, arg = args.mask.partition(":")
    ops = [p for p in primitives if p != "none"]
    edges = num_edges(settings.steps)
    if kind == "file":
        record = json.loads(Path(arg).read_text())
        return {k: record[k] for k in ("edge_ops_normal", "edge_ops_reduce")}
    if kind in ("cheapest", "priciest"):
        size = SIZES[args.size]["image_size"]
        cost = {p: op_saved_bytes(p, settings.init_channels, size) for p in ops}
        ranked = sorted(ops, key=lambda p: (cost[p], p), reverse=kind == "priciest")
        row = [p for p in ops if p in ranked[: args.keep]]
        return {"edge_ops_normal": [row] * edges, "edge_ops_reduce": [row] * edges}
    if kind == "random":
        g = np.random.default_rng(int(arg))
        rows = [
            [ops[k] for k in sorted(g.permutation(len(ops))[: args.keep])] for _ in range(2 * edges)
        ]
        return {"edge_ops_normal": rows[:edges], "edge_ops_reduce": rows[edges:]}
    sys.exit(f"--mask {args.mask}: expected etenas, cheapest, priciest, random:SEED, file:PATH")


def mask_state(args: argparse.Namespace, primitives, settings) -> dict:  # type: ignore[no-untyped-def]
    state = mask_ops(args, primitives, settings)
    for kind in ("edge_ops_normal", "edge_ops_reduce"):
        if any(len(row) != args.keep or "none" in row for row in state[kind]):
            sys.exit(f"--mask {args.mask}: {kind} does not keep {args.keep} ops per edge")
    return state


def etenas_stand_in(args: argparse.Namespace, path: Path) -> str:
    """The halfspace pruner's mask at the size, on random stand-in images (no CIFAR here),
    written to ``path``; its settings are params.yaml's halfspace-darts-1st ones except
    ``--prune-repeat``. Returns a label saying so."""
    import torch

    from mlonas.space.genotype import PRIMITIVES
    from mlonas.space.zeroshot import etenas_prune

    if args.threads:
        torch.set_num_threads(args.threads)
    s = {**params()["search"], **params()["methods"]["halfspace-darts-1st"]["search"]}
    size = SIZES[args.size]
    bs = args.prune_batch_size or s["prune_batch_size"]
    nb = args.prune_batches or s["prune_batches"]
    n = bs * nb
    images = torch.randn(n, 3, size["image_size"], size["image_size"],
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    t0 = time.perf_counter()
    result = etenas_prune(
        images, primitives=PRIMITIVES, steps=size["steps"], multiplier=size["multiplier"],
        num_classes=10, keep=args.keep, rankers=s["prune_rankers"], repeat=args.prune_repeat,
        batch_size=bs, batches=nb,
        channels=s["prune_channels"], seed=0, device=torch.device(args.device),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    path.write_text(json.dumps(dataclasses.asdict(result)))
    return (
        f"etenas on stand-in N(0,1) images (not CIFAR), repeat {args.prune_repeat},"
        f" {nb} batch(es) of {bs},"
        f" {seconds:.0f} s on {args.device}"
    )


def halfspace_table(args: argparse.Namespace) -> None:
    """Plain darts, first and second order: full space vs each pruned space (fresh process
    each), and the memory saving 1 - pruned/full beside the paper's claim."""
    print(
        f"half search space: plain darts step, size={args.size} ({SIZES[args.size]}),"
        f" device={args.device}, threads={args.threads or 'default'}, median of {args.steps}"
        f" after {args.warmup} warm-up, keep {args.keep} ops per edge"
    )
    print("paper (Rumiantsev & Coates, abstract): -81% memory vs the baseline one-shot setup")
    with tempfile.TemporaryDirectory(prefix="halfspace-") as tmp:
        mask_file = Path(tmp) / "etenas.json"
        label = etenas_stand_in(args, mask_file)
        print(f"etenas mask: {label}")
        masks = [None, f"file:{mask_file}", "cheapest", "priciest", "random:1", "random:2",
                 "random:3"]  # fmt: skip
        print(f"{'order':<7} {'mode':<18} {'space':<10} {'step s':>8} {'peak MB':>9} "
              f"{'1-pruned/full':>13}")  # fmt: skip
        for order, mode in (("first", "first_order"), ("second", "finite_difference")):
            full = None
            for mask in masks:
                extra = ["--mask", mask, "--keep", str(args.keep)] if mask else []
                r = run_worker(args, "--no-gap", *extra, "--worker", "plain", "darts", order,
                               mode, "1")  # fmt: skip
                name = "full" if mask is None else ("etenas*" if mask.startswith("file:") else mask)
                full = r["peak_mb"] if mask is None else full
                saving = "—" if mask is None else f"{1 - r['peak_mb'] / full:>+.1%}"
                print(f"{order:<7} {mode:<18} {name:<10} {r['median_s']:>8.2f} "
                      f"{r['peak_mb']:>9.0f} {saving:>13}", flush=True)  # fmt: skip
    if args.device != "cuda":
        print("CUDA max_memory_allocated: not measured (no CUDA)")
    print("* etenas*: the pruner's mask on stand-in images (see above), not on CIFAR-10")


def timed(dev, batches, warmup, step):  # type: ignore[no-untyped-def]
    """(step times after ``warmup``, peak MB, error text or "") of ``step(i, batch)``.

    CPU peak: ru_maxrss growth over the process so far (model and data already built);
    CUDA: ``max_memory_allocated``. A failure inside a compiled call is returned, not
    raised, so the caller can fall back to eager.
    """
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i, bt in enumerate(batches):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        try:
            step(i, bt)
        except Exception as exc:  # torch._dynamo / inductor errors have no common base
            if not any(getattr(m, "_compiled_call_impl", None) for m in _ALL_MODULES):
                raise
            return [], 0.0, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return times, peak_mb, ""


_ALL_MODULES: list = []


def modules_of(scheme):  # type: ignore[no-untyped-def]
    """The scheme's top-level networks (supernet, explainer/audience, SGL's learners)."""
    import torch

    found = []
    for value in vars(scheme).values():
        items = value if isinstance(value, list | tuple) else [value]
        found += [m for m in items if isinstance(m, torch.nn.Module)]
    return found


def compile_modules(scheme, mode: str) -> str:  # type: ignore[no-untyped-def]
    """``torch.compile`` the forward of every network of ``scheme`` in place (their
    backward follows through AOTAutograd); returns what was compiled."""
    mods = modules_of(scheme)
    for m in mods:
        m.compile(mode=mode, dynamic=False)
    _ALL_MODULES[:] = mods
    return f"{mode}: {', '.join(type(m).__name__ for m in mods)}"


def official_sources(mirror: Path, into: Path) -> None:
    """Write the official DARTS cnn/ files the step needs into ``into`` (from the git
    mirror; nothing of it is stored in this repository)."""
    git_dir = next((d for d in (mirror / "repo" / ".git", mirror) if (d / "HEAD").exists()), None)
    if git_dir is None:
        sys.exit(f"--darts-mirror: no git directory at {mirror} (or {mirror}/repo/.git)")
    for name in OFFICIAL_FILES:
        text = subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"HEAD:cnn/{name}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        (into / name).write_text(text)


def official_worker(args: argparse.Namespace) -> None:
    """One official DARTS search step per batch, as train_search.py's ``train()`` loop."""
    import types
    import warnings

    import torch
    from torch import nn

    warnings.filterwarnings("ignore")  # its deprecated add_(Number, Tensor) overloads
    size = SIZES[args.size]
    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if dev.type == "cpu":  # the shim: the 2018 code calls .cuda() on everything it builds
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    search = params()["search"]
    with tempfile.TemporaryDirectory(prefix="official-darts-") as tmp:
        official_sources(Path(args.darts_mirror), Path(tmp))
        sys.path.insert(0, tmp)
        from architect import Architect  # type: ignore[import-not-found]
        from model_search import Network  # type: ignore[import-not-found]

        torch.manual_seed(0)
        criterion = nn.CrossEntropyLoss().to(dev)
        model = Network(
            size["init_channels"], 10, size["layers"], criterion,
            steps=size["steps"], multiplier=size["multiplier"],
            stem_multiplier=search["stem_multiplier"],
        ).to(dev)  # fmt: skip
        optimizer = torch.optim.SGD(
            model.parameters(),
            search["lr"],
            momentum=search["momentum"],
            weight_decay=search["weight_decay"],
        )
        architect = Architect(
            model,
            types.SimpleNamespace(
                momentum=search["momentum"],
                weight_decay=search["weight_decay"],
                arch_learning_rate=search["arch_lr"],
                arch_weight_decay=search["arch_weight_decay"],
            ),
        )
        b, s = size["batch_size"], size["image_size"]
        g = torch.Generator().manual_seed(0)

        def batch() -> tuple[torch.Tensor, ...]:
            x = torch.randn(b, 3, s, s, generator=g)
            y = torch.randint(0, 10, (b,), generator=g)
            xv = torch.randn(b, 3, s, s, generator=g)
            yv = torch.randint(0, 10, (b,), generator=g)
            return tuple(t.to(dev) for t in (x, y, xv, yv))

        unrolled = args.order == "second"
        lr = float(search["lr"])

        def step(i: int, bt: tuple[torch.Tensor, ...]) -> None:  # train_search.py train()
            x, y, xv, yv = bt
            model.train()
            architect.step(x, y, xv, yv, lr, optimizer, unrolled=unrolled)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), search["grad_clip"])
            optimizer.step()

        batches = [batch() for _ in range(args.warmup + args.steps)]
        times, peak_mb, _ = timed(dev, batches, args.warmup, step)
    print(json.dumps({"median_s": statistics.median(times), "peak_mb": peak_mb, "gap": {}}))


def run_worker(args: argparse.Namespace, *worker: str, compile_mode: str = "") -> dict:
    """Run one configuration in a fresh process; its JSON line."""
    cmd = [
        sys.executable, __file__, "--size", args.size, "--device", args.device,
        "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--darts-mirror", str(args.darts_mirror),
        *(["--threads", str(args.threads)] if args.threads else []),
        *(["--no-gap"] if args.no_gap else []),
        *(["--weights-only"] if args.weights_only else []),
        *(["--mask", args.mask, "--keep", str(args.keep)] if args.mask and not any(
            w == "--mask" for w in worker) else []),
        "--stage", str(args.stage),
        *(["--compile-mode", compile_mode] if compile_mode else []),
        *worker,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(worker)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def official_table(args: argparse.Namespace) -> None:
    """Official DARTS vs ours, first and second order, one fresh process each."""
    size = SIZES[args.size]
    if (size["steps"], size["multiplier"]) != (4, 4):  # its Network.new() drops them
        sys.exit(
            f"--official-darts: size {args.size} has {size['steps']}-node cells; the official"
            " unrolled model is always built with 4 (use --size small or paper)"
        )
    print(
        f"official DARTS (quark0/darts) vs ours, size={args.size} ({SIZES[args.size]}), "
        f"device={args.device}, threads={args.threads or 'default'}, "
        f"median of {args.steps} after {args.warmup} warm-up"
    )
    print(f"{'order':<7} {'official s':>10} {'ours s':>8} {'ours/off':>8} "
          f"{'off MB':>8} {'ours MB':>8} {'ours/off':>8}")  # fmt: skip
    for order, mode in (("first", "first_order"), ("second", "finite_difference")):
        off = run_worker(args, "--official-worker", order)
        ours = run_worker(args, "--no-gap", "--worker", "plain", "darts", order, mode, "1")
        print(
            f"{order:<7} {off['median_s']:>10.3f} {ours['median_s']:>8.3f} "
            f"{ours['median_s'] / off['median_s']:>8.2f} {off['peak_mb']:>8.0f} "
            f"{ours['peak_mb']:>8.0f} {ours['peak_mb'] / max(off['peak_mb'], 1e-9):>8.2f}"
        )


def darts_grad(scheme, crit, bt, mode, step):  # type: ignore[no-untyped-def]
    from mlonas.mlo import darts_arch_grad

    return darts_arch_grad(scheme.model, crit, (bt.x, bt.y), bt.val, mode=mode, step=step)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="demo")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker", nargs=5, metavar=("SCHEME", "BASE", "ORDER", "MODE", "K"))
    parser.add_argument(
        "--no-gap",
        action="store_true",
        help="do not compare FD with exact (exact needs 2-3x the memory of FD)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="SCHEME:BASE:MODE",
        help="leave configurations out, e.g. plain:darts:exact or '*:*:exact' (memory)",
    )
    parser.add_argument(
        "--only", default=None, help="run only this scheme (plain|lease|sgl|lbt|il)"
    )
    parser.add_argument(
        "--weights-only",
        action="store_true",
        help="time a warm-up epoch's step: weight steps only, no architecture step",
    )
    parser.add_argument(
        "--stage", type=int, default=0, help="P-DARTS stage (0-based) to time; others ignore it"
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="append each measured step to src/mlonas/report/step_times.csv (mlonas plan)",
    )
    parser.add_argument(
        "--record-device",
        default=None,
        help="device name for --record (default: nvidia-h100 style from the CUDA name, or"
        " cpu-<cores>core)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument(
        "--mask",
        default=None,
        help="time a pruned space: etenas | cheapest | priciest | random:SEED | file:PATH"
        " (--keep ops per edge)",
    )
    parser.add_argument("--keep", type=int, default=4, help="ops kept per edge with --mask")
    parser.add_argument(
        "--halfspace",
        action="store_true",
        help="the half-search-space memory table (plain darts, full vs pruned spaces)",
    )
    parser.add_argument(
        "--prune-repeat", type=int, default=1, help="weight draws of --halfspace's etenas mask"
    )
    parser.add_argument(
        "--prune-batch-size", type=int, default=None, help="its batch (default: params.yaml's)"
    )
    parser.add_argument(
        "--prune-batches", type=int, default=None, help="its batches (default: params.yaml's)"
    )
    parser.add_argument(
        "--official-darts",
        action="store_true",
        help="time the official DARTS code beside ours (plain darts, first and second order)",
    )
    parser.add_argument("--darts-mirror", default=str(DARTS_MIRROR), help="quark0/darts git dir")
    parser.add_argument("--official-worker", choices=("first", "second"), dest="order")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="CUDA: also time each configuration with the networks torch.compile'd",
    )
    parser.add_argument(
        "--compile-mode",
        default="",
        help="torch.compile mode with --compile (default reduce-overhead = CUDA graphs)",
    )
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.order:
        official_worker(args)
        return
    if args.record and args.mask:
        sys.exit("--record: a pruned space's step has no key in the step-time table")
    if args.halfspace:
        halfspace_table(args)
        return
    if args.mask == "etenas" and not args.worker:  # computed once, here, not in the workers
        path = Path(tempfile.mkdtemp(prefix="halfspace-")) / "etenas.json"
        print(f"etenas mask: {etenas_stand_in(args, path)}")
        args.mask = f"file:{path}"
    if args.worker:
        args.scheme, args.base, _, args.mode, k = args.worker
        args.learners = int(k)
        args.compile = args.compile_mode
        worker(args)
        return
    if args.official_darts:
        official_table(args)
        return
    compile_mode = (args.compile_mode or "reduce-overhead") if args.compile else ""
    print(
        f"search step, size={args.size} ({SIZES[args.size]}), device={args.device}, "
        f"median of {args.steps} after {args.warmup} warm-up"
        + (", weights only" if args.weights_only else "")
        + (f", P-DARTS stage {args.stage}" if args.stage else "")
    )
    header = ("scheme", "K", "base", "order", "mode", "step s", "peak MB", "FD vs exact", "share")
    print(
        f"{header[0]:<6} {header[1]:>2} {header[2]:<12} {header[3]:<7} {header[4]:<18} "
        f"{header[5]:>8} {header[6]:>9} {header[7]:>22} {header[8]:>8}"
    )
    for scheme, base, order, mode, k in CONFIGS:
        label = f"{scheme:<6} {k:>2} {base:<12} {order:<7} {mode:<18}"
        if args.only and scheme != args.only:
            continue
        if any(fnmatch.fnmatch(f"{scheme}:{base}:{mode}", pat) for pat in args.skip):
            print(f"{label} {'skipped (--skip)':>32}")
            continue
        r = run_worker(args, "--worker", scheme, base, order, mode, str(k))
        gap = f"rel {r['gap']['rel']:.3f} cos {r['gap']['cos']:.3f}" if r["gap"] else "—"
        share = f"{r['gap']['share']:.2e}" if "share" in r["gap"] else "—"
        print(f"{label} {r['median_s']:>8.3f} {r['peak_mb']:>9.0f} {gap:>22} {share:>8}")
        if args.record:
            record(args, r)
        if not args.compile:
            continue
        if args.device != "cuda":
            print(f"{'  compiled (' + compile_mode + ')':<49} not measured (no CUDA)")
            continue
        c = run_worker(
            args, "--no-gap", "--worker", scheme, base, order, mode, str(k),
            compile_mode=compile_mode,
        )  # fmt: skip
        ratio = r["median_s"] / c["median_s"]
        print(
            f"{'  compiled (' + compile_mode + ')':<49} {c['median_s']:>8.3f} "
            f"{c['peak_mb']:>9.0f} {'eager/compiled ' + format(ratio, '.2f'):>22}  {c['compiled']}"
        )


def record(args: argparse.Namespace, r: dict) -> None:
    """Append one configuration's median step to mlonas' step-time table."""
    from mlonas.report.plan import StepKey, device_label, record_step_time

    flags = f" --steps {args.steps} --warmup {args.warmup}"
    flags += " --weights-only" if args.weights_only else ""
    flags += f" --stage {args.stage}" if args.stage else ""
    record_step_time(
        StepKey(**r["key"]),
        r["median_s"],
        device=args.record_device or device_label(r["device_name"]),
        source=f"benchmarks/search_step.py --size {args.size}{flags}",
        peak_mb=r["peak_mb"],
        note=f"median of {args.steps} after {args.warmup}; {r['threads']} torch thread(s)",
    )


if __name__ == "__main__":
    main()
