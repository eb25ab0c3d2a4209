"""MSR-DARTS: stable rank, spectral normalisation, the stable-rank supernet, its derivation,
its validation, and a search + export through the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config, write_params
from torch import nn
from torch.nn import functional as F

from mlonas.artifacts import validate_artifact
from mlonas.cli import main
from mlonas.config import BASES_WITHOUT_ARCHITECTURE, load_raw, validate_params
from mlonas.errors import MlonasError
from mlonas.search.bases import BASES, get_base
from mlonas.space.genotype import Genotype, derive_min_stable_rank, genotype_from_alphas
from mlonas.space.msr import (
    PRIMITIVES_SPECTRAL,
    SpectralNormConv,
    StableRankSupernet,
    cell_input_sizes,
)
from mlonas.space.stable_rank import stable_rank, stable_rank_fft
from mlonas.space.supernet import SupernetSpec

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "msr" / "stable_rank.json"


# -- stable rank ---------------------------------------------------------------------------


def test_stable_rank_matches_the_official_function() -> None:
    """Both implementations reproduce the official numpy function's outputs (fixture)."""
    cases = json.loads(FIXTURE.read_text())["cases"]
    assert {c["groups"] for c in cases} == {1, 4} and {c["dilation"] for c in cases} == {1, 2}
    for c in cases:
        w, shape = np.array(c["weight"]), tuple(c["in_shape"])
        kw = {"groups": c["groups"], "dilation": c["dilation"]}
        assert stable_rank_fft(w, shape, **kw) == pytest.approx(c["stable_rank"], rel=1e-12)
        assert stable_rank(w, shape, **kw) == pytest.approx(c["stable_rank"], rel=1e-12)
        assert stable_rank(torch.from_numpy(w), shape, **kw) == pytest.approx(
            c["stable_rank"], rel=1e-12
        )


def test_pointwise_stable_rank_is_the_area_times_the_matrix_stable_rank() -> None:
    rng = np.random.default_rng(0)
    for c_out, c_in, shape in ((6, 6, (8, 8)), (3, 7, (4, 2)), (16, 16, (32, 32))):
        w = rng.standard_normal((c_out, c_in, 1, 1))
        sv = np.linalg.svd(w[:, :, 0, 0], compute_uv=False)
        area = shape[0] * shape[1]
        closed = area * float((sv**2).sum() / sv[0] ** 2)
        assert stable_rank_fft(w, shape) == pytest.approx(closed, rel=1e-12)
        assert stable_rank(w, shape) == pytest.approx(closed, rel=1e-12)
        assert area <= closed <= area * min(c_out, c_in)
    # rank one: the smallest possible, exactly the area
    u = rng.standard_normal((5, 1))
    assert stable_rank((u @ u.T)[:, :, None, None], (4, 4)) == pytest.approx(16.0)


# -- spectral normalisation ----------------------------------------------------------------


def dense_operator_norm(conv: nn.Conv2d, size: tuple[int, int]) -> float:
    """The exact largest singular value of the zero-padded conv on a ``size`` map: the
    conv applied to every basis image gives the operator's dense matrix."""
    c, (h, w) = conv.in_channels, size
    basis = torch.eye(c * h * w, dtype=torch.float64).view(-1, c, h, w)
    with torch.no_grad():
        cols = F.conv2d(
            basis, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups
        )
    return float(np.linalg.svd(cols.flatten(1).numpy(), compute_uv=False)[0])


CONVS = [
    # (c_in, c_out, kernel, stride, padding, dilation, groups)
    (4, 4, 3, 1, 1, 1, 4),  # sep_conv_3x3's depthwise conv
    (4, 4, 5, 2, 2, 1, 4),  # the strided depthwise conv of a reduction edge
    (4, 4, 3, 2, 2, 2, 4),  # dil_conv_3x3 on a reduction edge
    (4, 4, 5, 1, 4, 2, 4),  # dil_conv_5x5
    (4, 5, 1, 1, 0, 1, 1),  # a pointwise conv
]


@pytest.mark.parametrize("c_in,c_out,k,stride,pad,dil,groups", CONVS)
def test_power_iteration_converges_to_the_exact_operator_norm(
    c_in: int, c_out: int, k: int, stride: int, pad: int, dil: int, groups: int
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, k, stride, pad, dil, groups, bias=False).double()
    size = (6, 6)
    exact = dense_operator_norm(conv, size)
    five = SpectralNormConv(copy.deepcopy(conv), size).double()
    many = SpectralNormConv(copy.deepcopy(conv), size, n_power_iterations=500).double()
    with torch.no_grad():
        assert float(five.sigma()) <= exact * (1 + 1e-12)  # u'Av never exceeds sigma_1
        assert float(many.sigma()) == pytest.approx(exact, rel=1e-6)
    if groups == 1 and k == 1:  # the pointwise operator norm is sigma_1(W) exactly
        w = conv.weight.detach()[:, :, 0, 0].numpy()
        assert exact == pytest.approx(np.linalg.svd(w, compute_uv=False)[0], rel=1e-12)


def test_spectral_norm_forward_training_and_eval() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 1, bias=False).double()
    sn = SpectralNormConv(conv, (4, 4)).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    # pointwise u, v persist: two forwards of 5 iterations = one of 10 from the same start
    ten = copy.deepcopy(sn)
    ten.n_power_iterations = 10
    sn.train()
    sn(x)
    y = sn(x)
    sigma10 = ten.sigma()
    assert torch.allclose(sn.u, ten.u, rtol=0, atol=1e-12)
    expected = F.conv2d(x, conv.weight / (sigma10 + 1e-5))
    assert torch.allclose(y, expected, rtol=1e-12, atol=1e-12)
    # the normalisation is differentiated through (sigma depends on W)
    y.sum().backward()
    assert conv.weight.grad is not None
    # eval mode uses the last training-mode weight, whatever W is now
    with torch.no_grad():
        conv.weight.mul_(3.0)
    sn.eval()
    assert torch.allclose(sn(x), expected, rtol=1e-12, atol=1e-12)


def test_depthwise_power_vectors_are_redrawn_every_forward() -> None:
    torch.manual_seed(2)
    sn = SpectralNormConv(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), (8, 8))
    x = torch.randn(1, 4, 8, 8)
    torch.manual_seed(3)
    sn(x)
    u1 = sn.u.clone()
    torch.manual_seed(3)  # the same draw gives the same u: it depends on the draw only
    sn(x)
    assert torch.equal(sn.u, u1)
    sn(x)
    assert not torch.equal(sn.u, u1)


# -- the supernet --------------------------------------------------------------------------


def tiny_net(layers: int = 3, image: int = 8) -> StableRankSupernet:
    torch.manual_seed(0)
    spec = SupernetSpec(
        4, 10, layers, steps=2, multiplier=2, primitives=PRIMITIVES_SPECTRAL,
        derivation="min_stable_rank",
    )  # fmt: skip
    return StableRankSupernet(spec, image)


def test_cell_sizes_follow_the_official_rule_with_its_reduction_quirk() -> None:
    assert cell_input_sizes(32, 8) == [(32, 32)] * 3 + [(16, 16)] * 3 + [(8, 8)] * 2
    net = tiny_net()  # reductions at cells 1 and 2
    assert net.cell_sizes == [(8, 8), (8, 8), (4, 4)]
    # reduction cell 1: edges from the inputs (0, 1, 2, 3) stride 2 -> 4x4; edge 4 comes
    # from node 2 at 4x4 but is measured at the cell's input size 8x8
    assert net.edge_sizes[1] == [(4, 4)] * 4 + [(8, 8)]
    assert net.edge_sizes[0] == [(8, 8)] * 5
    # every conv of every candidate op is normalised; the stem and preprocessing are not
    n_sn = sum(isinstance(m, SpectralNormConv) for m in net.modules())
    assert n_sn == 3 * 5 * (4 + 4 + 2 + 2)
    assert not any(isinstance(m, SpectralNormConv) for m in net.stem.modules())
    assert not any(isinstance(m, SpectralNormConv) for m in net.cells[0].preprocess1.modules())


def test_mixing_is_softmax_of_minus_stable_rank_per_cell_refreshed_each_epoch(tiny_cfg) -> None:
    net = tiny_net()
    assert net.arch_parameters() == [] and net.arch_names == []
    ranks = net.compute_stable_ranks()
    assert ranks.shape == (3, 5, 4)
    assert torch.equal(net.stable_ranks, torch.from_numpy(ranks))
    assert torch.equal(net.mixing, torch.softmax(-torch.from_numpy(ranks).float(), dim=-1))
    # per cell, not shared by the cells of a type
    assert not torch.equal(net.mixing[1], net.mixing[2])
    # the edge output is the mixing-weighted sum of its ops
    x = torch.randn(2, 4, 8, 8)
    edge = net.cells[0].edges[0]
    net.eval()
    want = sum(w * op(x) for w, op in zip(net.mixing[0, 0], edge.ops, strict=True))
    assert torch.allclose(edge(x, net.mixing[0, 0]), want)
    # the base never updates an architecture and refreshes the mixing at each epoch start
    base = get_base("msrdarts")
    s = tiny_cfg.method("msr-darts").search
    assert not base.learns_architecture
    assert not any(base.updates_architecture(e, s) for e in range(s.epochs))
    net.train()
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.arange(4)).backward()
        opt.step()
    before = net.stable_ranks.clone()
    base.set_epoch(net, 1, s)
    assert not torch.equal(net.stable_ranks, before)
    assert torch.equal(net.stable_ranks, torch.from_numpy(net.compute_stable_ranks()))


def test_config_knows_the_bases_without_architecture() -> None:
    """Validation (torch-free) and the bases agree on which bases learn no alphas."""
    assert {n for n, b in BASES.items() if not b.learns_architecture} == BASES_WITHOUT_ARCHITECTURE


# -- derivation ----------------------------------------------------------------------------


def test_min_stable_rank_derivation_on_a_hand_made_matrix() -> None:
    """Per node the two edges of smallest min-srank (ties: the lower input, listed first),
    on each the op of smallest srank (ties: the first); on raw -srank, not a row softmax."""
    s = np.full((5, 4), 1000.0)
    s[0] = [50, 40, 40, 60]  # node 0: edge 0's min 40 (ops 1 and 2 tie: op 1)
    s[1] = [40, 45, 70, 80]  # edge 1's min 40 too: the tie goes to input 0, listed first
    s[2] = [5, 5.01, 1000, 1000]  # node 1: min 5, but a near-tie (softmax max ~0.5)
    s[3] = [6, 1000, 1000, 1000]  # min 6: loses to edge 2 raw, would win under softmax
    s[4] = [7, 9, 3.5, 8]  # min 3.5: the strongest of node 1, listed first
    g = derive_min_stable_rank(s, s, 2, 2)
    want = (("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("dil_conv_3x3", 2), ("sep_conv_3x3", 0))
    assert g.normal == want and g.reduce == want and g.normal_concat == (2, 3)
    record = {
        "base": "msrdarts",
        "selected": "model",
        "architectures": {
            "model": {
                "steps": 2, "multiplier": 2, "derivation": "min_stable_rank",
                "srank_normal": s.tolist(), "srank_reduce": s.tolist(),
            }
        },
    }  # fmt: skip
    validate_artifact(record, "alphas", "alphas")
    assert genotype_from_alphas(record) == g
    del record["architectures"]["model"]["srank_reduce"]
    with pytest.raises(MlonasError, match=r"model\.srank_reduce: missing key"):
        validate_artifact(record, "alphas", "alphas")


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,what",
    [({"scheme": "lease"}, "scheme lease"), ({"scheme": "sgl"}, "scheme sgl"),
     ({"order": "second"}, "order second")],
)  # fmt: skip
def test_msrdarts_with_an_architecture_scheme_is_a_one_line_error(change: dict, what: str) -> None:
    raw = load_raw(REPO / "params.yaml")
    validate_params(raw)
    raw["methods"]["msr-darts"].update(change)
    with pytest.raises(MlonasError) as exc:
        validate_params(raw)
    msg = str(exc.value)
    assert "\n" not in msg and "methods.msr-darts" in msg and what in msg and "msrdarts" in msg


# -- search + export through the CLI -------------------------------------------------------


def test_msr_darts_search_and_export_through_the_cli(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, {"methods": {"msr-darts": {"search": {"batch_size": 16}}}})
    params = write_params(cfg, tmp_path / "params.yaml")
    split, out, cell = tmp_path / "split.json", tmp_path / "search", tmp_path / "cell.json"
    common = ["--params", str(params), "--dataset", "cifar10"]
    assert main(["split", *common, "--out", str(split)]) == 0
    search = ["search", *common, "--method", "msr-darts", "--seed", "0", "--split", str(split)]
    assert main([*search, "--out", str(out), "--device", "cpu"]) == 0
    alphas = json.loads((out / "alphas.json").read_text())
    validate_artifact(alphas, "alphas", "alphas")
    arch = alphas["architectures"]["model"]
    assert alphas["base"] == "msrdarts" and arch["derivation"] == "min_stable_rank"
    assert "alpha_normal" not in arch and arch["primitives"] == list(PRIMITIVES_SPECTRAL)
    cells = np.array(arch["srank_cells"])
    assert cells.shape == (3, 5, 4) and arch["reduction_cells"] == [1, 2]
    assert np.allclose(arch["srank_normal"], cells[0]) and np.allclose(
        arch["srank_reduce"], cells[1:].mean(axis=0)
    )
    assert [len(t["model"]["normal"][0]) for t in alphas["trajectory"]] == [4, 4, 4]
    history = pd.read_csv(out / "history.csv")
    assert list(history["arch_updated"]) == [False] * 3
    assert (
        Genotype.from_dict(json.loads(history["genotype"].iloc[-1])).to_dict() == arch["genotype"]
    )
    export = ["export", *common, "--method", "msr-darts", "--seed", "0"]
    assert main([*export, "--alphas", str(out / "alphas.json"), "--out", str(cell)]) == 0
    g = Genotype.load(cell)
    assert g.to_dict() == arch["genotype"]
    assert g == derive_min_stable_rank(arch["srank_normal"], arch["srank_reduce"], 2, 2)
    assert {op for op, _ in g.normal + g.reduce} <= set(PRIMITIVES_SPECTRAL)
    from mlonas.report.figures import plot_trajectory

    png = tmp_path / "trajectory.png"
    plot_trajectory(out / "alphas.json", png, history_path=out / "history.csv")
    assert png.stat().st_size > 1000
