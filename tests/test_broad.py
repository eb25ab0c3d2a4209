"""B-DARTS' broad networks (mlonas.space.broad): structure and parameter counts against
counts of the official code, hypergradients on a smooth float64 broad supernet, and a
bdarts-clr search -> export -> broad evaluation on the tiny configuration.

The pinned parameter counts were measured by instantiating the official classes
(zixiangding/BNASv2 @ d649dfd: ``BNASv2CLR/model_b.py`` ``Network(48, 10, 6, genotype,
'cifar10', en_layers=2, pool_time=2)``, ``BNASv2PC/model_b.py`` ``NetworkCIFAR`` likewise,
and ``BNASv2CLR/model_search_b.py`` ``Network(16, 10, 2, criterion, en_layers=1)``); the
same seed also gave bitwise the same initial weights and logits equal to 1e-6. No paper
reports these counts. :func:`closed_form` recounts them from the genotypes without our
modules.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from tiny_nets import LOSS, batches, cosine, flat, momentum_step, rel_err

from mlonas.config import Config, load_raw, validate_params
from mlonas.data.splits import write_split
from mlonas.errors import MlonasError
from mlonas.mlo import darts_arch_grad
from mlonas.report.cells import export_cell
from mlonas.search.bases import get_base
from mlonas.search.loop import run_search
from mlonas.space.broad import BroadSpec, BroadSupernet, NetworkBroad, pool_layers
from mlonas.space.evalnet import count_params_m, published_genotype
from mlonas.space.genotype import Genotype
from mlonas.train import run_train_cifar

REPO = Path(__file__).resolve().parents[1]

# measured from the official code (module docstring); normal = convolution cell, reduce =
# enhancement cell
OFFICIAL_COUNTS = {
    "BNASv2_CLR_v1": 3_338_074,
    "BNASv2_CLR_v2": 3_174_874,
    "BNASv2_PC_cifar_v1": 3_678_682,
    "BNASv2_PC_cifar_v2": 3_525_850,
}
OFFICIAL_SEARCH_WEIGHTS = 1_224_762  # model_search_b.Network(16, 10, 2, en_layers=1)


def _op(name: str, c: int, stride: int) -> int:
    if name in ("none", "max_pool_3x3", "avg_pool_3x3"):
        return 0
    if name == "skip_connect":
        return 0 if stride == 1 else c * c + 2 * c
    k = int(name[-1])
    one = k * k * c + c * c + 2 * c  # depthwise k x k, pointwise, BN
    return 2 * one if name.startswith("sep") else one


def _cell(edges: list, c_pp: int, c_p: int, c: int, stride: int) -> int:
    n = c_pp * c + 2 * c + c_p * c + 2 * c  # preprocess0 (ReLUConvBN or FR: same) + 1
    return n + sum(_op(op, c, stride if src < 2 else 1) for op, src in edges)


def closed_form(g: dict, c: int = 48, layers: int = 6, en_layers: int = 2) -> tuple[int, int]:
    """(parameters, C_final) of model_b.Network from a genotype dict, by hand."""
    rcb = lambda ci, co: ci * co + 2 * co  # noqa: E731
    fr = lambda ch: ch * ch + 2 * ch  # noqa: E731
    d = layers // 2
    pools = [d - 1, 2 * d - 1]  # [2, 5] at 6 cells
    n = 27 * 3 * c + 2 * 3 * c
    c_pp = c_p = 3 * c
    cc, gap, en = c, [], []
    for i in range(layers):
        stride = 2 if i in pools else 1
        cc *= stride
        n += _cell(g["normal"], c_pp, c_p, cc, stride)  # the normal cell, even at stride 2
        c_pp, c_p = c_p, 4 * cc
        if i + 1 in pools:
            gap.append(cc)
            n += rcb(4 * cc, cc) + sum(fr(ch) for ch in gap[:-1])
        if i in pools:
            en.append(4 * cc if i == pools[-1] else cc)
            n += rcb(c_p, en[-1]) + sum(fr(ch) for ch in en[:-1])
    n += sum(fr(ch) for ch in gap)
    for j in range(en_layers):
        n += _cell(g["reduce"], en[0] if j == 0 else c_pp, c_p, cc, 1)
        c_pp, c_p = c_p, 4 * cc
        n += rcb(c_p, c_p if j + 1 == en_layers else cc)
    c_final = sum(gap) + (en_layers - 1) * cc + c_p
    return n + c_final * 10 + 10, c_final


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_broad_network_counts_are_the_official_codes(name: str) -> None:
    g = published_genotype(name)
    net = NetworkBroad(48, 10, 6, False, g)
    n = sum(p.numel() for p in net.parameters())
    assert n == OFFICIAL_COUNTS[name]
    assert (n, net.c_final) == closed_form(g.to_dict())
    assert net.c_final == 1104
    assert count_params_m(net) == pytest.approx(n / 1e6)


def test_broad_network_uses_normal_for_convolution_and_reduce_for_enhancement() -> None:
    g = published_genotype("BNASv2_CLR_v1")  # conv cell: sep convs; enhancement: pools
    net = NetworkBroad(8, 10, 6, False, g)
    assert net.pool_layers == pool_layers(6, 2) == [2, 5]
    names = lambda cell: [type(op).__name__ for op in cell.ops]  # noqa: E731
    for i, cell in enumerate(net.conv_cells):
        assert cell.reduction == (i in (2, 5))
        assert names(cell)[:3] == ["SepConv", "SepConv", "SepConv"]
    for cell in net.en_cells:
        assert not cell.reduction and names(cell)[0] == "AvgPool2d"


@pytest.mark.parametrize("size", [8, 16, 32])
def test_broad_network_forward_has_no_auxiliary_logits(size: int) -> None:
    net = NetworkBroad(4, 7, 3, False, published_genotype("BNASv2_CLR_v2"), drop_path_prob=0.2)
    x = torch.randn(2, 3, size, size)
    logits, aux = net.train()(x)
    assert logits.shape == (2, 7) and aux is None
    logits, aux = net.eval()(x)
    assert logits.shape == (2, 7) and aux is None
    with pytest.raises(MlonasError, match="no auxiliary head"):
        NetworkBroad(4, 7, 3, True, published_genotype("BNASv2_CLR_v2"))
    with pytest.raises(MlonasError, match="pool_time 2"):
        NetworkBroad(4, 7, 6, False, published_genotype("BNASv2_CLR_v2"), pool_time=3)


def test_broad_supernet_is_the_official_search_network() -> None:
    net = get_base("bdarts").build(
        load_settings(), num_classes=10, state=get_base("bdarts").initial_state(load_settings())
    )
    assert isinstance(net, BroadSupernet) and net.c_final == 304
    assert sum(p.numel() for p in net.weight_parameters()) == OFFICIAL_SEARCH_WEIGHTS
    assert [tuple(a.shape) for a in net.arch_parameters()] == [(14, 8), (14, 8)]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    g = net.genotype()
    assert len(g.normal) == len(g.reduce) == 8
    assert all(op != "none" for op, _ in g.normal + g.reduce)
    # the convolution cells are stride 2 and mixed by alpha_normal: moving alpha_reduce
    # alone changes only the enhancement cell's half of the genotype
    with torch.no_grad():
        net.alpha_reduce.normal_(0, 1)
    assert net.genotype().normal == g.normal


def load_settings():
    from mlonas.config import search_settings

    return search_settings(load_raw(REPO / "params.yaml"), "bdarts-clr")


def tiny_broad(seed: int = 0) -> BroadSupernet:
    torch.manual_seed(seed)
    spec = BroadSpec(
        init_channels=2, num_classes=3, layers=2, steps=2, multiplier=2, smooth=True, en_layers=2
    )
    net = BroadSupernet(spec).double()
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_(0, 0.5)
    return net


def test_first_order_is_the_direct_gradient_on_the_broad_supernet() -> None:
    net = tiny_broad()
    train, val = batches()
    grads, _ = darts_arch_grad(net, LOSS, train, val, mode="first_order")
    ref_net = copy.deepcopy(net).train()
    ref = torch.autograd.grad(LOSS(ref_net(val[0]), val[1]), ref_net.arch_parameters())
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)
    assert all(float(g.abs().sum()) > 0 for g in grads)  # both cell types get a gradient


def test_finite_difference_matches_exact_on_the_broad_supernet() -> None:
    net = tiny_broad()
    train, val = batches()
    step = momentum_step(net)
    exact, _ = darts_arch_grad(net, LOSS, train, val, mode="exact", step=step)
    errors = []
    for eps in (0.1, 0.01, 0.001):  # central differences: the error falls ~100x per decade
        fd, _ = darts_arch_grad(net, LOSS, train, val, mode="finite_difference", step=step, eps=eps)
        assert cosine(fd, exact) >= 0.99
        errors.append(rel_err(fd, exact))
    assert errors[0] > errors[1] > errors[2] and errors[1] < 1e-3 and errors[2] < 1e-4
    # the implicit term is far from negligible here, so the comparison has teeth
    direct, _ = darts_arch_grad(net, LOSS, train, val, mode="first_order")
    assert rel_err(direct, exact) > 100 * errors[1]
    assert flat(exact).norm() > 0


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("methods", "bdarts-clr", "search", "layers"), 3, "a bdarts base needs layers 2"),
        (("methods", "darts-1st", "search", "layers"), 2, "layers must be at least 3"),
        (("methods", "bdarts-clr", "eval", "cifar", "auxiliary_weight"), 0.4, "network broad"),
        (("methods", "bdarts-clr", "eval", "cifar", "pool_time"), 3, "network broad"),
    ],
)
def test_broad_settings_are_validated(path: tuple, value: object, message: str) -> None:
    raw = load_raw(REPO / "params.yaml")
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(MlonasError, match=message):
        validate_params(raw)


def test_bdarts_clr_searches_exports_and_trains_the_broad_network(
    tiny_cfg: Config, tmp_path: Path
) -> None:
    for ds in ("cifar10", "cifar100"):
        write_split(tiny_cfg, ds, tiny_cfg.split_path(ds))
    out = tmp_path / "s"
    run_search(
        tiny_cfg, "cifar10", "bdarts-clr", 0, tiny_cfg.split_path("cifar10"), str(out), "cpu"
    )
    arch = json.loads((out / "alphas.json").read_text())["architectures"]["model"]
    assert len(arch["alpha_normal"]) == 5 and len(arch["alpha_reduce"][0]) == 8
    cell = tmp_path / "cell.json"
    g = export_cell(
        str(out / "alphas.json"), str(cell), dataset="cifar10", method="bdarts-clr", seed=0
    )
    assert g.to_dict() == arch["genotype"] and Genotype.load(cell) == g
    ev = tmp_path / "eval"
    metrics = run_train_cifar(
        tiny_cfg, "cifar10", "bdarts-clr", 0, str(cell), tiny_cfg.split_path("cifar10"),
        str(ev), device="cpu",
    )  # fmt: skip
    s = tiny_cfg.eval_settings("cifar", "bdarts-clr")
    broad = NetworkBroad(s.init_channels, 10, s.layers, False, g)
    assert metrics["params_m"] == pytest.approx(count_params_m(broad))
    state = torch.load(ev / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("en_cells.") for k in state)
    assert not any(k.startswith("auxiliary_head") for k in state)
