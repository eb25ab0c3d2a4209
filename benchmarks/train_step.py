"""Evaluation-training throughput (images/s) and peak memory: the official-style loop vs ours.

One training step is what :func:`mlonas.train.loop._train_epoch` does per batch: fetch the
batch, forward (with the auxiliary head), cross-entropy + 0.4 x auxiliary loss, backward,
gradient-norm clip 5, SGD step. Rows:

* ``official fp32``: as the official DARTS ``train.py``: fp32, NCHW, eager, and for CIFAR
  batches made by a DataLoader (2 workers, as ``train.py``) running the PIL transforms
  (RandomCrop 32 pad 4, flip, ToTensor, Normalize, Cutout 16) on the CPU;
* ``ours fp32`` / ``ours bf16`` / ``+channels_last`` / ``+compile``: the settings of
  ``eval.*`` (precision, channels_last, compile); for CIFAR with ``loader: device``
  (:mod:`mlonas.data.device`: the uint8 set on the device, augmented there).

CIFAR: DARTS_V2 genotype, auxiliary head, drop path 0.2, 10 classes, uint8 synthetic
images (5,000; the set's size does not change a step's cost). ImageNet: 1000 classes,
label smoothing 0.1, one synthetic batch already on the device for every row (the JPEG
input pipeline is measured separately), so its rows compare the model step only.

``--size paper``: CIFAR C=36, 20 cells, batch 96, 32x32; ImageNet C=48, 14 cells, per-GPU
batch 128, 224x224. ``--size small`` (CPU): CIFAR C=8, 5 cells, batch 16; ImageNet C=8,
5 cells, batch 4, 112x112. Each row runs in a fresh process (its own peak memory: CUDA
``max_memory_allocated``; CPU: growth of the main process's peak RSS after start-up, the
DataLoader workers' memory not included). Images/s is batch / the median step time over
``--steps`` timed steps after ``--warmup`` untimed ones (CUDA synchronised per step).
Rows of a device that is absent print "not measured (no CUDA)"; ``compile`` on the CPU
is skipped unless ``--cpu-compile`` (compiling costs minutes there).

    python benchmarks/train_step.py --size small                 # CPU, ~3 minutes
    python benchmarks/train_step.py --size paper --steps 20      # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SIZES = {
    "paper": {
        "cifar": {"C": 36, "layers": 20, "batch": 96, "image": 32},
        "imagenet": {"C": 48, "layers": 14, "batch": 128, "image": 224},
    },
    "small": {
        "cifar": {"C": 8, "layers": 5, "batch": 16, "image": 32},
        "imagenet": {"C": 8, "layers": 5, "batch": 4, "image": 112},
    },
}
# (row name, official pipeline, precision, channels_last, compile)
ROWS = [
    ("official fp32", True, "fp32", False, False),
    ("ours fp32", False, "fp32", False, False),
    ("ours bf16", False, "bf16", False, False),
    ("ours bf16+channels_last", False, "bf16", True, False),
    ("ours bf16+channels_last+compile", False, "bf16", True, True),
]
WORKERS = 2  # the official train.py's DataLoader workers
N_IMAGES = 5000


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(args: argparse.Namespace) -> dict[str, object]:
    """Time one row in this process; return images/s, peak MiB and whether compile fell back."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from mlonas.data.device import DeviceImages
    from mlonas.data.loaders import cifar_train_transform
    from mlonas.data.sources import NORMALIZATION, ArrayImageDataset
    from mlonas.settings import CifarEvalSettings
    from mlonas.space.evalnet import NetworkCIFAR, NetworkImageNet, published_genotype
    from mlonas.train.loop import Arithmetic, CompiledOrEager

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name, official, precision, channels_last, compile_ = next(r for r in ROWS if r[0] == args.row)
    spec = SIZES[args.size][args.bench]
    base_rss = _rss_mib()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    torch.manual_seed(0)
    genotype = published_genotype("DARTS_V2")
    b, size = spec["batch"], spec["image"]
    if args.bench == "cifar":
        classes, smoothing = 10, 0.0
        net: nn.Module = NetworkCIFAR(spec["C"], classes, spec["layers"], True, genotype, 0.2)
    else:
        classes, smoothing = 1000, 0.1
        net = NetworkImageNet(spec["C"], classes, spec["layers"], True, genotype, 0.0)
    values = {
        "layers": spec["layers"], "init_channels": spec["C"], "epochs": 1, "batch_size": b,
        "lr": 0.025, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0,
        "drop_path": 0.2, "auxiliary_weight": 0.4, "label_smoothing": smoothing,
        "num_workers": WORKERS, "precision": precision, "channels_last": channels_last,
        "compile": compile_, "lr_min": 0.0, "scheduler_step_first": True, "cutout": 16,
        "loader": "workers" if official else "device", "pool_bn": False,
        "network": "darts", "en_layers": None, "pool_time": None,
    }  # fmt: skip
    arith = Arithmetic.of(CifarEvalSettings.from_params(values, "train_step.py", "eval.cifar"))
    net = net.to(dev, memory_format=arith.memory_format)
    opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    crit = nn.CrossEntropyLoss(label_smoothing=smoothing)
    model: nn.Module | CompiledOrEager = net
    if compile_:
        model = CompiledOrEager(net, f"train_step {args.bench}")

    g = torch.Generator().manual_seed(0)
    if args.bench == "cifar":
        raw = torch.randint(0, 256, (N_IMAGES, size, size, 3), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, classes, (N_IMAGES,), generator=g)
        if official:
            ds_cfg = {"image_size": size, "source": "cifar10"}
            data = ArrayImageDataset(
                raw.numpy(), labels.tolist(), cifar_train_transform("cifar10", ds_cfg, 16)
            )

            def batches():  # type: ignore[no-untyped-def]
                for epoch in range(10**6):
                    gen = torch.Generator().manual_seed(epoch)
                    yield from DataLoader(
                        data, b, shuffle=True, num_workers=WORKERS, drop_last=True,
                        pin_memory=dev.type == "cuda", generator=gen,
                    )  # fmt: skip
        else:
            mean, std = NORMALIZATION["cifar10"]
            resident = DeviceImages(raw, labels, mean, std, train=True, padding=4, cutout=16).to(
                dev
            )

            def batches():  # type: ignore[no-untyped-def]
                for epoch in range(10**6):
                    yield from resident.epoch_batches(
                        b, shuffle=True, seed=0, epoch=epoch, drop_last=True
                    )
    else:
        x_fixed = torch.randn(b, 3, size, size, generator=g).to(dev)
        y_fixed = torch.randint(0, classes, (b,), generator=g).to(dev)

        def batches():  # type: ignore[no-untyped-def]
            while True:
                yield x_fixed, y_fixed

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    it = batches()
    times = []
    net.train()
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        x, y = next(it)
        x, y = arith.inputs(x, dev), y.to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with arith.context(dev):
            logits, aux = model(x)
            loss = crit(logits, y) + 0.4 * crit(aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = _rss_mib() - base_rss
    fell_back = isinstance(model, CompiledOrEager) and model.compiled is None
    return {"ips": b / statistics.median(times), "peak_mib": peak, "eager": fell_back, "row": name}


def run_row(args: argparse.Namespace, bench: str, row: str, device: str) -> dict[str, object]:
    cmd = [
        sys.executable, __file__, "--worker", "--bench", bench, "--row", row, "--device", device,
        "--size", args.size, "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--threads", str(args.threads),
    ]  # fmt: skip
    env_path = str(REPO / "src")
    import os

    env = {**os.environ, "PYTHONPATH": env_path + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    # 1 by default: on a busy 2-core machine two OpenMP threads spin-wait on each other
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per row")
    parser.add_argument("--bench", choices=["cifar", "imagenet", "both"], default="both")
    parser.add_argument("--cpu-compile", action="store_true", help="also time compile on CPU")
    parser.add_argument("--no-cpu", action="store_true", help="CUDA rows only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    has_cuda = torch.cuda.is_available()
    devices = ([] if args.no_cpu else ["cpu"]) + ["cuda"]
    benches = ["cifar", "imagenet"] if args.bench == "both" else [args.bench]
    header = (
        f"{'bench':9} {'size':6} {'device':6} {'row':33} {'images/s':>9} {'vs official':>11}"
        f" {'peak MiB':>9}"
    )
    what = f"median of {args.steps} steps after {args.warmup} warm-up"
    print(f"# train_step: {what}; {args.threads} CPU thread(s) per row")
    print(header)
    print("-" * len(header))
    for bench in benches:
        for device in devices:
            official = None
            for row, *_rest in ROWS:
                compile_ = row.endswith("+compile")
                prefix = f"{bench:9} {args.size:6} {device:6} {row:33}"
                if device == "cuda" and not has_cuda:
                    print(f"{prefix} not measured (no CUDA)")
                    continue
                if device == "cpu" and compile_ and not args.cpu_compile:
                    print(f"{prefix} not measured (CPU compile skipped; --cpu-compile)")
                    continue
                r = run_row(args, bench, row, device)
                if "error" in r:
                    print(f"{prefix} failed: {r['error']}")
                    continue
                ips = float(r["ips"])  # type: ignore[arg-type]
                official = ips if row == "official fp32" else official
                ratio = f"{ips / official:.2f}x" if official else "-"
                note = "  (compile fell back to eager)" if r.get("eager") else ""
                print(
                    f"{prefix} {ips:9.1f} {ratio:>11} {float(r['peak_mib']):9.0f}{note}", flush=True
                )  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
