"""MAE-NAS' pieces (Hu, Chu, Zhang, arXiv 2311.12086), as mlonas interprets them: a
masked-image reconstruction objective for the DARTS bilevel search, with a multi-scale
decoder on the supernet (docs/mae-nas.md says which choices are ours).

The paper's method section could not be read; only the abstracts were. What they fix:
labels are replaced by masked-image reconstruction at both levels, and a "multi-scale"
(v1) / "hierarchical" (v2) decoder keeps unsupervised DARTS from collapsing. Everything
else here is an interpretation, labelled so in params.yaml:

- :func:`patch_mask` — SimMIM-style masking for a convolutional encoder: whole
  ``patch_size`` patches, a fixed fraction ``mask_ratio`` per image (MAE's
  ``len_keep = int(N (1 - ratio))``), set to 0 in the normalized input (the per-channel
  dataset mean), which is what a CNN can consume (no token dropping);
- :func:`masked_mse` — MAE's loss: the mean squared error on the masked pixels only,
  optionally against per-patch normalized targets (MAE's ``norm_pix_loss``);
- :class:`MaeSupernet` — the base's supernet without its classifier, plus
  :class:`MultiScaleDecoder` on :meth:`Supernet.stage_outputs`. It exposes the same
  architecture tensors and the same records as the supernet it wraps, so the
  hypergradients of :mod:`mlonas.mlo`, derivation and ``alphas.json`` are unchanged.

The batch form the hypergradient functions see: ``x`` is the masked image, ``y`` the
target image with the mask as a fourth channel (``torch.cat([target, mask], 1)``), so
``darts_arch_grad`` runs unchanged in all three modes and every forward of one
hypergradient sees one mask (common random numbers, as DrNAS' one draw per hypergradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mlonas.space.genotype import Genotype
from mlonas.space.supernet import Draw, Supernet, SupernetSpec

DECODERS = ("multiscale", "last")


def patch_mask(
    n: int,
    size: tuple[int, int],
    patch_size: int,
    mask_ratio: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``[n, 1, H, W]`` float mask on the CPU, 1 on masked pixels: per image, the
    ``N - int(N (1 - mask_ratio))`` patches with the largest uniform noise of ``generator``
    (MAE's random shuffle), so every image has the same number of masked patches."""
    h, w = size
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch size {patch_size} does not divide the image size {h}x{w}")
    gh, gw = h // patch_size, w // patch_size
    patches = gh * gw
    keep = int(patches * (1 - mask_ratio))
    if keep >= patches:
        raise ValueError(f"mask ratio {mask_ratio} masks none of the {patches} patches")
    noise = torch.rand(n, patches, generator=generator)
    order = noise.argsort(dim=1)  # ascending: the first `keep` stay visible
    mask = torch.ones(n, patches)
    mask.scatter_(1, order[:, :keep], 0.0)
    mask = mask.view(n, 1, gh, gw)
    return mask.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def apply_mask(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input, packed target): masked pixels zeroed in the normalized image, and the
    target image with the mask appended as its last channel (the batch form of the
    hypergradients)."""
    mask = mask.to(device=x.device, dtype=x.dtype)
    return x * (1 - mask), torch.cat([x, mask], dim=1)


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target image, mask broadcastable over its channels) of a packed target."""
    return packed[:, :-1], packed[:, -1:]


def normalize_patches(target: torch.Tensor, patch_size: int) -> torch.Tensor:
    """MAE's ``norm_pix_loss`` target: each patch (all its pixels and channels) shifted to
    mean 0 and scaled by 1/sqrt(var + 1e-6) (unbiased variance, as MAE's ``var()``)."""
    b, c, h, w = target.shape
    p = patch_size
    t = target.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    t = t.reshape(b, h // p, w // p, c * p * p)
    t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
    t = t.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(b, c, h, w)


def masked_mse(
    recon: torch.Tensor, packed: torch.Tensor, patch_size: int, norm_pix: bool
) -> torch.Tensor:
    """MAE's loss: mean over the masked pixels (and channels) of the squared error; the
    visible pixels do not enter it."""
    target, mask = unpack(packed)
    if norm_pix:
        target = normalize_patches(target, patch_size)
    err = (recon - target) ** 2 * mask
    return err.sum() / (mask.sum() * target.size(1))


class MultiScaleDecoder(nn.Module):
    """Our reading of the "multi-scale" / "hierarchical" decoder: a 1x1 convolution of each
    stage output to ``channels``, bilinear upsampling to the input size, their sum, an
    activation, a 1x1 convolution to RGB. With one input (``decoder: last``) it is the
    single-scale decoder that, by the abstract, lets unsupervised DARTS collapse.
    ``smooth``: softplus instead of ReLU (the float64 hypergradient tests)."""

    def __init__(self, in_channels: Sequence[int], channels: int, smooth: bool = False) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.act = nn.Softplus() if smooth else nn.ReLU()
        self.head = nn.Conv2d(channels, 3, 1)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        total: torch.Tensor | None = None
        for conv, f in zip(self.lateral, features, strict=True):
            # 1x1 conv and bilinear upsampling commute (the weights of one sum to 1): the
            # conv runs at the stage's resolution, the cheaper order
            up = F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
            total = up if total is None else total + up
        assert total is not None
        return self.head(self.act(total))


class MaeSupernet(nn.Module):
    """A supernet as MAE-NAS' encoder: the base's supernet, its classifier replaced by an
    identity (an unused registered parameter would make ``torch.autograd.grad`` over the
    weights fail in the unrolled hypergradients), and a :class:`MultiScaleDecoder`.

    The architecture is the wrapped supernet's: :meth:`arch_parameters` returns its very
    tensors, and derivation, ``alphas.json`` records and DrNAS' draw are delegated, so a
    search with this objective exports exactly what its base would."""

    def __init__(self, supernet: Supernet, decoder: str, decoder_channels: int) -> None:
        super().__init__()
        if type(supernet) is not Supernet:
            # MSR-DARTS and B-DARTS override forward; their stage outputs are not the cells'
            raise ValueError(f"{type(supernet).__name__} has no stage outputs for a decoder")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r} (have: {', '.join(DECODERS)})")
        supernet.classifier = nn.Identity()
        self.supernet = supernet
        self.decoder_kind = decoder
        channels = supernet.stage_channels()
        if decoder == "last":
            channels = channels[-1:]
        self.decoder = MultiScaleDecoder(channels, decoder_channels, supernet.spec.smooth)

    def forward(self, x: torch.Tensor, draw: Draw | None = None) -> torch.Tensor:
        """The reconstruction of the (masked) input ``x``; ``draw`` as Supernet.forward."""
        features = self.supernet.stage_outputs(x, draw)
        if self.decoder_kind == "last":
            features = features[-1:]
        return self.decoder(features, (x.shape[-2], x.shape[-1]))

    # -- the architecture: the wrapped supernet's -----------------------------------
    @property
    def spec(self) -> SupernetSpec:
        return self.supernet.spec

    @property
    def arch_names(self) -> list[str]:
        return self.supernet.arch_names

    def arch_parameters(self) -> list[nn.Parameter]:
        return self.supernet.arch_parameters()

    def weight_parameters(self) -> list[nn.Parameter]:
        """The supernet's weights and the decoder's (both trained by the weight step)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def draw(self) -> Draw | None:
        return self.supernet.draw()

    def genotype(self) -> Genotype:
        return self.supernet.genotype()

    def arch_record(self) -> dict[str, object]:
        return self.supernet.arch_record()

    def trajectory_record(self) -> dict[str, Any]:
        return self.supernet.trajectory_record()
