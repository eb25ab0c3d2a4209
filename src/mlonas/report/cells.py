"""The ``export`` stage: a search's alphas -> genotype JSON + a figure of both cells."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlonas.artifacts import load_artifact
from mlonas.io import atomic_savefig, atomic_write_json, sha256_file
from mlonas.space.genotype import Edge, Genotype, genotype_from_alphas


def export_cell(
    alphas_path: str, out: str, *, dataset: str, method: str, seed: int, figure: str | None = None
) -> Genotype:
    """Derive the selected architecture's genotype; write ``out`` (JSON) and its figure.

    ``genotype`` is the cell evaluation trains. A scheme that searches several
    architectures (SGL's K learners) has all of them derived into ``genotypes`` by name,
    so the cells a seed did not report stay inspectable.
    """
    # checked before anything is drawn or written: a bad record leaves no half export
    record = load_artifact(alphas_path, "alphas")
    where = f"alphas file {alphas_path}"
    genotype = genotype_from_alphas(record, where=where)
    names, base = list(record["architectures"]), record["base"]
    genotypes = {n: genotype_from_alphas(record, n, where=where).to_dict() for n in names}
    figure = figure or str(Path(out).with_suffix(".png"))
    plot_genotype(genotype, figure, title=f"{method} on {dataset}, seed {seed}")
    atomic_write_json(
        out,
        {
            "genotype": genotype.to_dict(),
            "genotypes": genotypes,
            "dataset": dataset,
            "method": method,
            "seed": seed,
            "base": base,
            "architecture": record["selected"],
            "alphas": {"path": alphas_path, "sha256": sha256_file(alphas_path)},
            "figure": figure,
        },
    )
    return genotype


def _draw_cell(ax: Any, edges: tuple[Edge, ...], concat: tuple[int, ...], title: str) -> None:
    """Inputs on the left, intermediate nodes on an arc, the output on the right."""
    steps = len(edges) // 2
    pos: dict[Any, tuple[float, float]] = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for i in range(steps):
        pos[i + 2] = (1.4 * (i + 1), 0.55 if i % 2 == 0 else -0.55)
    pos["out"] = (1.4 * (steps + 1), 0.0)
    labels = {0: "c_{k-2}", 1: "c_{k-1}", "out": "c_{k}", **{i + 2: str(i) for i in range(steps)}}
    colors = {0: "#9ecae1", 1: "#9ecae1", "out": "#fdd0a2"}

    def arrow(a: Any, b: Any, text: str | None, color: str) -> None:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={
                "arrowstyle": "->",
                "color": color,
                "lw": 1.2,
                "shrinkA": 14,
                "shrinkB": 14,
                "connectionstyle": "arc3,rad=0.08",
            },
        )
        if text:
            # Labels sit 60% along the edge, which keeps labels of edges out of one node apart.
            ax.text(
                x0 + 0.6 * (x1 - x0),
                y0 + 0.6 * (y1 - y0),
                text,
                fontsize=7,
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            )

    for k, (op, src) in enumerate(edges):
        arrow(src, k // 2 + 2, op, "#3182bd")
    for node in concat:
        arrow(node, "out", None, "#999999")
    for node, (x, y) in pos.items():
        ax.text(
            x,
            y,
            labels[node],
            ha="center",
            va="center",
            fontsize=9,
            bbox={"boxstyle": "round,pad=0.4", "fc": colors.get(node, "#c7e9c0"), "ec": "#555"},
        )
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_title(title)
    ax.axis("off")


def plot_genotype(genotype: Genotype, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    _draw_cell(axes[0], genotype.normal, genotype.normal_concat, "normal cell")
    _draw_cell(axes[1], genotype.reduce, genotype.reduce_concat, "reduction cell")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
