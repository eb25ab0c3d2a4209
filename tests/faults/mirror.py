"""An offline stand-in for CIFAR-10's download server, so torchvision's real download runs.

Only the network transfer is replaced (``torchvision.datasets.utils._urlretrieve`` copies
the archive from a local "mirror" directory, and redirects are not resolved); torchvision's
own md5 check of the archive, its extraction and its md5 checks of the extracted files
run unchanged. The archive is a miniature CIFAR-10 in the original on-disk format
(``tests/test_data.py: write_mini_cifar``) and torchvision's hard-coded md5 sums are
replaced by the miniature's, exactly as test_data does.

A *spec* (JSON-able dict) carries everything a process needs to use the mirror, so a
subprocess can install it too: ``python tests/faults/mirror.py SPEC.json mlonas-args...``
runs ``mlonas`` with the mirror installed (the concurrency tests start real processes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

ARCHIVE = "cifar-10-python.tar.gz"
URL = f"https://cifar-mirror.invalid/{ARCHIVE}"  # never resolved: .invalid is reserved


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def build(
    mirror: Path, patch: Callable[..., Any], *, n_batch: int = 8, corrupt: str | None = None
) -> dict[str, Any]:
    """Write ``mirror/cifar-10-python.tar.gz``; return the spec that serves it.

    ``corrupt`` names a member (e.g. ``data_batch_3``) whose bytes are damaged *after* its
    md5 was registered: the archive is intact as published, its content is not.
    ``patch`` is ``monkeypatch.setattr`` (write_mini_cifar registers the md5 sums with it).
    """
    from test_data import write_mini_cifar  # tests/ is on sys.path under pytest
    from torchvision.datasets import CIFAR10

    staging = mirror / "staging"
    write_mini_cifar(staging, "cifar10", _Patcher(patch), n_batch=n_batch)  # type: ignore[arg-type]
    folder = staging / CIFAR10.base_folder
    if corrupt is not None:
        blob = bytearray((folder / corrupt).read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (folder / corrupt).write_bytes(bytes(blob))
    archive = mirror / ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=CIFAR10.base_folder)
    shutil.rmtree(staging)
    return {
        "archive": str(archive),
        "url": URL,
        "tgz_md5": _md5(archive),
        "train_list": CIFAR10.train_list,
        "test_list": CIFAR10.test_list,
        "meta": CIFAR10.meta,
        "truncate": False,
        "network_error": False,
        "delay_s": 0.0,
        "log": None,
    }


class _Patcher:
    """The one method of pytest's MonkeyPatch that write_mini_cifar uses."""

    def __init__(self, patch: Callable[..., Any]) -> None:
        self.setattr = patch


def install(spec: dict[str, Any], patch: Callable[..., Any]) -> None:
    """Point torchvision's CIFAR10 at the mirror of ``spec`` (``patch`` = setattr-like).

    ``truncate`` serves half the archive (a transfer cut short that looks complete);
    ``network_error`` writes half of it and then fails like a dropped connection;
    ``delay_s`` spreads the
    transfer over that many seconds (a slow network, so concurrent jobs overlap);
    ``log`` gets one line per transfer (how many downloads really happened).
    """
    import torchvision.datasets.utils as tv_utils
    from torchvision.datasets import CIFAR10

    for key in ("url", "tgz_md5", "train_list", "test_list", "meta"):
        patch(CIFAR10, key, spec[key])
    source = Path(spec["archive"])

    def urlretrieve(url: str, filename: Any, chunk_size: int = 1 << 15) -> None:
        # torchvision retries a failed https transfer over http
        assert url.split("://")[-1] == spec["url"].split("://")[-1], url
        data = source.read_bytes()
        if spec["truncate"]:
            data = data[: len(data) // 2]
        if spec["log"]:
            with open(spec["log"], "a", encoding="utf-8") as log:
                log.write(f"download {filename}\n")
        chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
        with open(filename, "wb") as fh:  # torchvision writes in place, chunk by chunk
            for i, chunk in enumerate(chunks):
                if spec.get("network_error") and i >= len(chunks) // 2:
                    raise urllib.error.URLError("[Errno 104] Connection reset by peer")
                fh.write(chunk)
                fh.flush()
                time.sleep(float(spec["delay_s"]) / len(chunks))

    patch(tv_utils, "_urlretrieve", urlretrieve)
    patch(tv_utils, "_get_redirect_url", lambda url, max_hops=3: url)


def main(argv: list[str]) -> int:
    """``mirror.py SPEC.json mlonas-args...``: ``mlonas`` with the mirror installed.

    With ``spec["barrier"] = {"dir": ..., "parties": n}`` the process, once its imports are
    done, waits until ``n`` processes are ready, so that concurrent jobs really reach
    the data at the same moment (process start-up alone varies by seconds).
    """
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    install(spec, setattr)
    from mlonas.cli import main as mlonas_main
    from mlonas.search import loop  # noqa: F401 - the heavy imports, before the barrier

    barrier = spec.get("barrier")
    if barrier:
        ready = Path(barrier["dir"])
        ready.mkdir(parents=True, exist_ok=True)
        (ready / str(os.getpid())).touch()
        deadline = time.monotonic() + 300
        while len(list(ready.iterdir())) < int(barrier["parties"]):
            if time.monotonic() > deadline:
                raise SystemExit("barrier: the other processes never came")
            time.sleep(0.01)
    return mlonas_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
