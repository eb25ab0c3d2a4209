"""Operations, genotypes (JSON + DARTS derivation) and the supernet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlonas.errors import MlonasError
from mlonas.space.genotype import (
    Genotype,
    derive_cell,
    derive_genotype,
    genotype_from_alphas,
    num_edges,
)
from mlonas.space.ops import PRIMITIVES, FactorizedReduce, build_op, drop_path
from mlonas.space.supernet import Supernet, SupernetSpec

DARTS_V2 = {
    "normal": [
        ["sep_conv_3x3", 0],
        ["sep_conv_3x3", 1],
        ["sep_conv_3x3", 0],
        ["sep_conv_3x3", 1],
        ["sep_conv_3x3", 1],
        ["skip_connect", 0],
        ["skip_connect", 0],
        ["dil_conv_3x3", 2],
    ],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [
        ["max_pool_3x3", 0],
        ["max_pool_3x3", 1],
        ["skip_connect", 2],
        ["max_pool_3x3", 1],
        ["max_pool_3x3", 0],
        ["skip_connect", 2],
        ["skip_connect", 2],
        ["max_pool_3x3", 1],
    ],
    "reduce_concat": [2, 3, 4, 5],
}


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_keeps_channels_and_applies_stride(name: str, stride: int) -> None:
    op = build_op(name, 6, stride, affine=False)
    y = op(torch.randn(2, 6, 8, 8))
    assert y.shape == (2, 6, 8 // stride, 8 // stride)
    if name == "none":
        assert not y.any()


def test_strided_skip_is_factorized_reduce_and_unknown_op_is_rejected() -> None:
    assert isinstance(build_op("skip_connect", 4, 2), FactorizedReduce)
    with pytest.raises(ValueError, match="unknown operation"):
        build_op("conv_7x7", 4, 1)


def test_drop_path_zeroes_whole_samples_and_preserves_expectation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.ones(4000, 2, 2, 2)
    y = drop_path(x, 0.25, generator=g)
    per_sample = y.flatten(1)
    values = per_sample.unique()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.75)
    assert abs(float(y.mean()) - 1.0) < 0.05
    assert drop_path(x, 0.0) is x


def test_genotype_json_round_trip_and_published_cell() -> None:
    g = Genotype.from_dict(DARTS_V2)
    assert g.steps == 4
    assert Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("reduce"), "missing key"),
        (lambda d: d["normal"].__setitem__(0, ["conv_9x9", 0]), "unknown operation 'conv_9x9'"),
        (lambda d: d["normal"].__setitem__(0, ["none", 0]), "unknown operation 'none'"),
        (lambda d: d["normal"].__setitem__(1, ["sep_conv_3x3", 2]), "not an earlier node"),
        (lambda d: d["reduce"].pop(), "non-empty list of edge pairs"),
        (lambda d: d.__setitem__("normal_concat", [2, 9]), "normal_concat"),
        (
            lambda d: d["normal"].__setitem__(0, "sep_conv_3x3"),
            r"must be \[operation, input index\]",
        ),
    ],
)
def test_malformed_genotypes_fail_with_one_line(mutate, message: str, tmp_path) -> None:
    data = json.loads(json.dumps(DARTS_V2))
    mutate(data)
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MlonasError, match=message) as exc:
        Genotype.load(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_genotype_file_that_is_not_json(tmp_path) -> None:
    path = tmp_path / "cell.json"
    path.write_text("Genotype(normal=[...])")
    with pytest.raises(MlonasError, match="not valid JSON"):
        Genotype.load(path)
    with pytest.raises(MlonasError, match="does not exist"):
        Genotype.load(tmp_path / "missing.json")


def test_derivation_keeps_two_strongest_edges_and_best_non_none_op() -> None:
    steps = 2
    w = torch.zeros(num_edges(steps), len(PRIMITIVES))
    none, sep3, skip, maxp = (
        PRIMITIVES.index(n) for n in ("none", "sep_conv_3x3", "skip_connect", "max_pool_3x3")
    )
    # node 0 (edges 0,1): edge 0 dominated by `none` but its best real op beats edge 1.
    w[0, none], w[0, sep3] = 0.9, 0.6
    w[1, skip] = 0.5
    # node 1 (edges 2,3,4): edge 3 weakest; edge 4's best op is max_pool.
    w[2, sep3], w[3, skip], w[4, maxp] = 0.7, 0.1, 0.8
    cell = derive_cell(w, steps)
    assert cell == (
        ("sep_conv_3x3", 0),
        ("skip_connect", 1),
        ("max_pool_3x3", 2),
        ("sep_conv_3x3", 0),
    )


def test_derivation_is_deterministic_under_ties() -> None:
    w = torch.full((num_edges(3), len(PRIMITIVES)), 1.0 / len(PRIMITIVES))
    cell = derive_cell(w, 3)
    assert [src for _, src in cell] == [0, 1, 0, 1, 0, 1]
    assert {op for op, _ in cell} == {PRIMITIVES[1]}


def test_genotype_from_alphas_record_matches_tensor_derivation() -> None:
    torch.manual_seed(0)
    a_n, a_r = torch.randn(5, 8), torch.randn(5, 8)
    record = {
        "derivation": "darts",
        "selected": "model",
        "architectures": {
            "model": {
                "primitives": list(PRIMITIVES),
                "steps": 2,
                "multiplier": 2,
                "alpha_normal": a_n.tolist(),
                "alpha_reduce": a_r.tolist(),
            }
        },
    }
    assert genotype_from_alphas(record) == derive_genotype(a_n, a_r, 2, 2)
    record["architectures"]["model"]["alpha_normal"] = a_n[:3].tolist()
    with pytest.raises(MlonasError, match="alphas must have 5 rows"):
        genotype_from_alphas(record)
    record["architectures"]["model"]["alpha_normal"] = a_n.tolist()
    record["architectures"]["model"]["edge_ops_normal"] = [["conv_9x9"] * 8] * 5
    with pytest.raises(MlonasError, match="unknown operation 'conv_9x9'"):
        genotype_from_alphas(record)


def test_supernet_shapes_parameter_split_and_gradients() -> None:
    torch.manual_seed(0)
    net = Supernet(SupernetSpec(init_channels=4, num_classes=5, layers=3, steps=2, multiplier=2))
    assert net.spec.reduction_layers == (1, 2)
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert not arch & weights
    assert arch | weights == {id(p) for p in net.parameters()}
    assert net.alpha_normal.shape == (5, 8)
    out = net(torch.randn(3, 3, 16, 16))
    assert out.shape == (3, 5)
    out.sum().backward()
    assert net.alpha_normal.grad is not None and net.alpha_normal.grad.abs().sum() > 0
    g = net.genotype()
    assert g.steps == 2 and g.normal_concat == (2, 3)
    # search-time BN carries no affine parameters
    assert all(
        not m.affine
        for m in net.modules()
        if isinstance(m, torch.nn.BatchNorm2d) and m is not net.stem[1]
    )


def test_derivation_on_pruned_edges_with_edge_weights_and_skip_limit() -> None:
    steps = 2
    ops = [["none", "skip_connect", "sep_conv_3x3"]] * num_edges(steps)
    w = torch.tensor(
        [
            [0.1, 0.8, 0.1],  # node 0: edge 0 skip (strong)
            [0.1, 0.7, 0.2],  #         edge 1 skip
            [0.2, 0.2, 0.6],  # node 1: edge 2 sep
            [0.1, 0.5, 0.4],  #         edge 3 skip, sep close behind
            [0.9, 0.05, 0.05],  #       edge 4: `none` never chosen, weakest real op
        ]
    )
    assert derive_cell(w, steps, ops) == (
        ("skip_connect", 0),
        ("skip_connect", 1),
        ("sep_conv_3x3", 0),
        ("skip_connect", 1),
    )
    # P-DARTS: at most 2 skips -> the weakest chosen skip (edge 3, 0.5) goes, and its sep
    # (0.4) still beats edge 4, so the edge stays with its next best op
    assert derive_cell(w, steps, ops, max_skip=2) == (
        ("skip_connect", 0),
        ("skip_connect", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
    )
    # PC-DARTS: edge weights reorder the edges into node 1 (edge 4 now ranks first; its
    # skip/sep tie goes to the lower op index)
    ew = torch.tensor([0.5, 0.5, 0.1, 0.1, 5.0])
    assert derive_cell(w, steps, ops, edge_weights=ew)[2:] == (
        ("skip_connect", 2),
        ("sep_conv_3x3", 0),
    )


def test_node_softmax_normalises_edges_into_each_node() -> None:
    from mlonas.space.genotype import node_softmax

    beta = torch.randn(num_edges(3), dtype=torch.float64)
    out = node_softmax(beta, 3)
    np.testing.assert_allclose([out[:2].sum(), out[2:5].sum(), out[5:9].sum()], 1.0)
    # the same numbers as a softmax over each node's edges in torch, as the supernet has it
    want = torch.cat([beta[:2].softmax(0), beta[2:5].softmax(0), beta[5:9].softmax(0)])
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "options",
    [
        {"partial_channels": 2, "edge_normalization": True},  # PC-DARTS
        {"aux_skip": True},  # DARTS-
        {
            "edge_ops_normal": (("none", "skip_connect", "avg_pool_3x3"),) * 5,
            "edge_ops_reduce": (("max_pool_3x3", "skip_connect", "sep_conv_3x3"),) * 5,
            "max_skip_normal": 1,
        },  # a P-DARTS stage
    ],
)
def test_supernet_base_options_forward_backward_and_genotype(options: dict) -> None:
    torch.manual_seed(0)
    spec = SupernetSpec(init_channels=4, num_classes=5, layers=3, steps=2, multiplier=2, **options)
    net = Supernet(spec)
    net.skip_dropout = 0.3
    out = net(torch.randn(3, 3, 16, 16))
    out.sum().backward()
    assert out.shape == (3, 5)
    assert all(p.grad is not None for p in net.arch_parameters())
    g = net.genotype()
    if "edge_ops_normal" in options:
        assert net.alpha_normal.shape == (5, 3)
        assert {op for op, _ in g.normal} <= {"skip_connect", "avg_pool_3x3"}
        assert [op for op, _ in g.normal].count("skip_connect") <= 1
    if options.get("edge_normalization"):
        assert len(net.arch_parameters()) == 4
    record = {"selected": "m", "architectures": {"m": net.arch_record()}}
    assert genotype_from_alphas(record) == g


def test_partial_channels_touch_only_one_kth_and_shuffle() -> None:
    from mlonas.space.supernet import MixedOp, channel_shuffle

    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    op = MixedOp(8, 1, ("skip_connect",), smooth=False, partial=4)
    y = op(torch.randn(2, 8, 4, 4), torch.tensor([0.0]))  # zero weight: 1/4 channels zeroed
    zeroed = (y.abs().flatten(2).sum(-1) == 0).sum(dim=1)
    assert zeroed.tolist() == [2, 2]


def test_darts_minus_aux_skip_is_not_an_architecture_choice() -> None:
    torch.manual_seed(0)
    spec = SupernetSpec(
        init_channels=4, num_classes=5, layers=3, steps=2, multiplier=2, aux_skip=True
    )
    net = Supernet(spec).eval()
    x = torch.randn(2, 3, 8, 8)
    net.aux_beta = 1.0
    a = net(x)
    net.aux_beta = 0.0
    b = net(x)
    assert not torch.allclose(a, b)
    assert len(net.arch_parameters()) == 2  # no beta among the architecture parameters


def test_audience_at_width_64_is_torchvisions_cifar_resnet18() -> None:
    """LeaSE's audience at the papers' size is torchvision's ResNet-18 with the CIFAR stem:
    the same modules, names and shapes (torchvision's weights load into it strictly), the
    same outputs, and the CIFAR ResNet-18 parameter count derived from torchvision's
    published ImageNet count."""
    from torchvision.models import resnet18
    from torchvision.models.resnet import ResNet18_Weights

    from mlonas.space.audience import AudienceResNet

    ours = AudienceResNet([2, 2, 2, 2], 10, 64).double().eval()
    ref = resnet18(num_classes=10)
    ref.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    ref.maxpool = torch.nn.Identity()
    ref = ref.double().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert torch.equal(ours(x), ref(x))
    # 11,689,512 (ImageNet, 1000 classes) - the 7x7 stem + the 3x3 one - 1000 + 10 classes
    imagenet = ResNet18_Weights.IMAGENET1K_V1.meta["num_params"]
    cifar = imagenet - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 - (512 + 1) * (1000 - 10)
    assert cifar == 11_173_962
    assert sum(p.numel() for p in ours.parameters()) == cifar


def test_narrow_audience_scales_every_stage() -> None:
    """The demo's audience (one block per stage, 8 wide): stages of 8, 16, 32, 64 channels."""
    from mlonas.space.audience import AudienceResNet

    net = AudienceResNet([1, 1, 1, 1], 10, 8)
    widths = [
        layer[0].conv2.out_channels for layer in (net.layer1, net.layer2, net.layer3, net.layer4)
    ]
    assert widths == [8, 16, 32, 64] and net.fc.in_features == 64
    out = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="4 stages"):
        AudienceResNet([1, 1, 1], 10, 8)
