"""MAE-NAS (search.objective mae, our interpretation): the masked-reconstruction objective
through DARTS' hypergradient, the mask as common random numbers, the wrapper's shared
architecture, and the stage outputs of the supernet.

The hypergradient checks run on the smooth float64 tiny supernet (tests/tiny_nets.py)
with a softplus decoder, where the unrolled reconstruction objective is smooth: the
papers' finite difference must agree with autograd, and autograd with a central
difference of the unrolled objective written here from scratch with
``torch.func.functional_call`` (no mlonas.mlo).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_nets import batches, cosine, flat, rel_err, tiny_net
from torch.func import functional_call

from mlonas.config import load_raw, validate_params
from mlonas.errors import MlonasError
from mlonas.mlo import VirtualStep, darts_arch_grad
from mlonas.search.objective import MaskedReconstruction
from mlonas.settings import SearchSettings
from mlonas.space.mae import MaeSupernet, apply_mask, masked_mse, patch_mask

REPO = Path(__file__).resolve().parents[1]
PATCH = 2  # 8x8 tiny images: 16 patches, 4 visible at ratio 0.75
RATIO = 0.75


def loss_fn(out: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return masked_mse(out, packed, PATCH, False)


def mae_net(decoder: str = "multiscale") -> MaeSupernet:
    net = tiny_net()  # smooth, float64, alphas away from uniform
    torch.manual_seed(11)
    return MaeSupernet(net, decoder, 4).double()


def masked_batches(seed: int = 5):
    """(train, val) in the hypergradients' batch form, masks from one seeded generator."""
    (x, _), (xv, _) = batches()  # the labels are not used
    g = torch.Generator().manual_seed(seed)
    train = apply_mask(x, patch_mask(x.size(0), (8, 8), PATCH, RATIO, g))
    val = apply_mask(xv, patch_mask(xv.size(0), (8, 8), PATCH, RATIO, g))
    return train, val


def sgd_after_one_step(net: MaeSupernet, lr: float = 0.1) -> torch.optim.SGD:
    """An SGD optimizer over the weights with momentum buffers from one real step (the
    weights put back where they were)."""
    params = net.weight_parameters()
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=3e-4)
    g = torch.Generator().manual_seed(3)
    saved = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.01
    opt.step()
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
            p.grad = None
    return opt


def scratch_unrolled(
    net: MaeSupernet, opt: torch.optim.SGD, train, val, shift: dict[str, torch.Tensor]
) -> float:
    """L_rec^val(w', alpha + shift) with w' = w - lr (mu m + grad_w L_rec^train + wd w), from
    scratch: functional_call on the wrapper, train-mode BN on fresh buffer copies."""
    group = opt.param_groups[0]
    lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
    arch = {id(p) for p in net.arch_parameters()}
    named = dict(net.named_parameters())
    w_names = [n for n, p in named.items() if id(p) not in arch]
    alphas = {n: (p.detach() + shift[n]) for n, p in named.items() if id(p) in arch}
    weights = {n: named[n].detach().clone().requires_grad_(True) for n in w_names}
    net.train()

    def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        buffers = {n: b.clone() for n, b in net.named_buffers()}
        return functional_call(net, {**params, **alphas, **buffers}, (x,))

    loss = loss_fn(forward(weights, train[0]), train[1])
    grads = torch.autograd.grad(loss, list(weights.values()))
    new = {}
    for (n, w), g in zip(weights.items(), grads, strict=True):
        m = opt.state[named[n]]["momentum_buffer"]
        new[n] = (w - lr * (mu * m + g + wd * w)).detach()
    with torch.no_grad():
        return float(loss_fn(forward(new, val[0]), val[1]))


# -- the hypergradient ------------------------------------------------------------------


def test_finite_difference_agrees_with_exact_on_the_reconstruction_loss() -> None:
    net = mae_net()
    train, val = masked_batches()
    step = VirtualStep.from_optimizer(sgd_after_one_step(net))
    exact, loss_e = darts_arch_grad(net, loss_fn, train, val, mode="exact", step=step)
    fd, loss_f = darts_arch_grad(net, loss_fn, train, val, mode="finite_difference", step=step)
    assert float(loss_f) == pytest.approx(float(loss_e), rel=1e-12)
    assert cosine(fd, exact) >= 0.99
    assert rel_err(fd, exact) < 1e-3
    # the implicit term matters here, so agreement is not the direct term's alone
    direct, _ = darts_arch_grad(net, loss_fn, train, val, mode="first_order")
    assert rel_err(direct, exact) > 10 * rel_err(fd, exact)


def test_exact_matches_a_central_difference_of_the_unrolled_objective() -> None:
    net = mae_net()
    train, val = masked_batches()
    opt = sgd_after_one_step(net)
    exact, _ = darts_arch_grad(
        net, loss_fn, train, val, mode="exact", step=VirtualStep.from_optimizer(opt)
    )
    g = torch.Generator().manual_seed(4)
    arch = {id(p) for p in net.arch_parameters()}
    names = [n for n, p in net.named_parameters() if id(p) in arch]
    dirs = {
        n: torch.randn(p.shape, generator=g, dtype=torch.float64)
        for n, p in net.named_parameters()
        if id(p) in arch
    }
    h = 1e-5
    plus = scratch_unrolled(net, opt, train, val, {n: h * d for n, d in dirs.items()})
    minus = scratch_unrolled(net, opt, train, val, {n: -h * d for n, d in dirs.items()})
    numeric = (plus - minus) / (2 * h)
    # the hypergradient comes in arch_parameters() order; named in the same order
    assert [id(p) for p in net.arch_parameters()] == [
        id(dict(net.named_parameters())[n]) for n in names
    ]
    analytic = float(flat(exact) @ flat([dirs[n] for n in names]))
    assert numeric == pytest.approx(analytic, rel=1e-6)


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_the_mask_is_a_fixed_input_of_the_hypergradient(mode: str) -> None:
    """Same batches and masks: bitwise the same gradient; another mask: another gradient."""
    net = mae_net()
    step = VirtualStep.from_optimizer(sgd_after_one_step(net))
    a, _ = darts_arch_grad(net, loss_fn, *masked_batches(5), mode=mode, step=step)
    b, _ = darts_arch_grad(net, loss_fn, *masked_batches(5), mode=mode, step=step)
    c, _ = darts_arch_grad(net, loss_fn, *masked_batches(6), mode=mode, step=step)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert rel_err(c, a) > 1e-3


def test_the_objective_draws_its_masks_from_its_checkpointed_generator() -> None:
    raw = load_raw(REPO / "params.yaml")
    s = SearchSettings.from_params(
        {**raw["search"], **raw["methods"]["mae-darts-1st"]["search"]}, "params", "search"
    )
    x, y = torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    one, two = MaskedReconstruction(s, 0), MaskedReconstruction(s, 0)
    first = one.prepare(x, y)
    saved = copy.deepcopy(one.state_dict())
    after = one.prepare(x, y)
    assert not torch.equal(first[1], after[1])  # the stream runs on
    two.load_state_dict(saved)
    assert torch.equal(two.prepare(x, y)[1], after[1])  # resumed: the same next mask
    # every image: 64 patches of 4x4, int(64 * 0.25) = 16 visible
    mask = first[1][:, -1]
    assert torch.equal(mask.sum(dim=(1, 2)), torch.full((4,), 48.0 * 16))
    # the validation pass's masks are the same at every epoch
    g1, g2 = one.eval_generator(), two.eval_generator()
    assert torch.equal(one.prepare(x, y, g1)[1], two.prepare(x, y, g2)[1])


# -- the loss and the mask --------------------------------------------------------------


def test_loss_ignores_the_visible_pixels_of_the_target() -> None:
    net = mae_net()
    (x, _), _ = batches()
    g = torch.Generator().manual_seed(2)
    mask = patch_mask(x.size(0), (8, 8), PATCH, RATIO, g).double()
    inputs, packed = apply_mask(x, mask)
    assert torch.equal(inputs * mask, torch.zeros_like(inputs))  # masked pixels zeroed
    assert torch.equal(inputs * (1 - mask), x * (1 - mask))  # visible ones untouched
    with torch.no_grad():
        out = net(inputs)
    base = loss_fn(out, packed)
    visible = mask[:, 0] == 0
    changed = packed.clone()
    changed[:, :3][visible.unsqueeze(1).expand(-1, 3, -1, -1)] += 5.0
    assert torch.equal(loss_fn(out, changed), base)
    hidden = packed.clone()
    hidden[:, :3][(~visible).unsqueeze(1).expand(-1, 3, -1, -1)] += 5.0
    assert float(loss_fn(out, hidden)) > float(base) + 1.0
    # and the masked pixels of the image cannot reach the encoder's input
    x2 = x + 3.0 * mask
    assert torch.equal(apply_mask(x2, mask)[0], inputs)


def test_norm_pix_loss_normalizes_each_patch() -> None:
    from mlonas.space.mae import normalize_patches

    t = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    n = normalize_patches(t, 4)
    patch = n[0, :, :4, 4:]  # one 4x4 patch, all channels
    assert float(patch.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(patch.var()) == pytest.approx(1.0, rel=1e-4)
    raw = t[0, :, :4, 4:]
    torch.testing.assert_close(patch, (raw - raw.mean()) / (raw.var() + 1e-6) ** 0.5)


# -- the wrapper and the supernet -------------------------------------------------------


def test_wrapper_shares_the_architecture_and_derives_the_same_cell() -> None:
    inner = tiny_net()
    before = inner.genotype().to_dict()
    net = MaeSupernet(inner, "multiscale", 4).double()
    assert [id(a) for a in net.arch_parameters()] == [id(a) for a in inner.arch_parameters()]
    assert net.genotype().to_dict() == inner.genotype().to_dict() == before
    assert net.arch_record() == inner.arch_record()
    assert net.trajectory_record() == inner.trajectory_record()
    # no classifier parameter: every weight gets a gradient from the reconstruction loss
    assert not any("classifier" in n for n, _ in net.named_parameters())
    train, _ = masked_batches()
    grads = torch.autograd.grad(loss_fn(net(train[0]), train[1]), net.weight_parameters())
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)
    arch = {id(a) for a in net.arch_parameters()}
    assert not any(id(p) in arch for p in net.weight_parameters())
    assert len(net.weight_parameters()) + len(arch) == len(list(net.parameters()))


def test_stage_outputs_are_the_stages_and_feed_the_classifier() -> None:
    net = tiny_net()
    (x, _), _ = batches()
    outs = net.stage_outputs(x)
    assert [tuple(o.shape[1:]) for o in outs] == [(4, 8, 8), (8, 4, 4), (16, 2, 2)]
    assert [o.size(1) for o in outs] == net.stage_channels()
    logits = net.classifier(net.global_pooling(outs[-1]).flatten(1))
    assert torch.equal(logits, net(x))


def test_single_scale_decoder_reads_only_the_last_stage() -> None:
    net = mae_net("last")
    assert len(net.decoder.lateral) == 1
    assert net.decoder.lateral[0].in_channels == net.supernet.stage_channels()[-1]
    train, _ = masked_batches()
    assert net(train[0]).shape == train[0].shape


# -- validation and the search ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scheme": "sgl"}, "needs scheme plain"),
        ({"base": "msrdarts"}, "base msrdarts: it learns no architecture"),
        ({"base": "bdarts", "search": {"layers": 2, "en_layers": 1}}, "base bdarts"),
        ({"base": "drnas"}, "base drnas"),
        ({"search": {"decoder": None}}, "search.decoder: objective mae needs it"),
        ({"search": {"patch_size": 5}}, "patch_size 5 does not divide"),
        ({"search": {"objective": "classification"}}, "is for objective mae"),
    ],
)
def test_validation_refuses_mae_where_it_cannot_run(change: dict, message: str) -> None:
    from mlonas.config import deep_merge

    raw = load_raw(REPO / "params.yaml")
    method = raw["methods"]["mae-darts-1st"]
    raw["methods"]["mae-darts-1st"] = deep_merge(method, change)
    if "drnas" in str(change):  # DrNAS' own stage keys, so that only the objective fails
        raw["methods"]["mae-darts-1st"]["search"].update(raw["methods"]["drnas"]["search"])
    with pytest.raises(MlonasError, match=message):
        validate_params(raw)


def test_mae_search_reports_reconstruction_not_accuracy(tiny_cfg, tmp_path: Path) -> None:
    from test_search import search

    search(tiny_cfg, tmp_path / "s", method="mae-darts-1st")
    history = pd.read_csv(tmp_path / "s" / "history.csv")
    assert {"train_loss", "val_loss", "train_rec_skill", "val_rec_skill"} <= set(history)
    assert not any(c.endswith("_acc") for c in history.columns)
    assert history[["train_loss", "val_loss"]].notna().all().all()
    assert (history["val_loss"] > 0).all()
