"""The stable rank of a convolution, as MSR-DARTS measures its candidate operations.

MSR-DARTS (minimum stable rank DARTS; official code mtaecchhi/msrdarts) learns no
architecture parameters: each edge of its supernet ranks its candidate ops by the stable
rank of the op's *last* ``nn.Conv2d`` (for sep/dil convs the final 1x1 pointwise conv),
mixes them by softmax(-srank) and keeps, at derivation, the op of smallest stable rank.

The stable rank is taken of the convolution *operator* on an ``h x w`` feature map in the
circular approximation: the singular values of a 2-D convolution with circular padding are
those of the ``c_out x c_in`` matrices of the kernel's 2-D DFT at each of the ``h*w``
frequencies (Sedghi et al. 2019). The official ``calculate_stable_rank``
(spectralnorm/spectral_norm_utils.py:21-48) computes exactly that, and so does
:func:`stable_rank`:

- the kernel is first expanded by its dilation (zeros between the taps, :9-19);
- ``np.fft.fft2(weight, (h, w), axes=(2, 3))`` zero-pads (or, for a map smaller than the
  kernel, crops) the kernel to ``h x w``;
- a grouped (depthwise) conv's per-frequency matrix is diagonal, so its singular values
  are the moduli of the per-channel DFT coefficients (:38-45);
- srank = sum of all squared singular values / the largest squared one (:47-48)
  (:func:`stable_rank_fft`).

For a 1x1 kernel every frequency sees the same matrix W, so srank = h*w*||W||_F^2 /
sigma_1(W)^2 (what :func:`stable_rank` computes for it): the feature-map area scales it,
which is why MSR-DARTS' softmax(-srank) mixing is numerically one-hot and why the shape
each op is measured at matters (:func:`mlonas.space.msr.cell_input_sizes`: the official
shape rule).

Computed in NumPy float64 like the official code (``tests/test_msr.py`` replays
the official function's outputs on seeded weights, ``tests/fixtures/msr``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def expand_dilation(weight: np.ndarray, dilation: int) -> np.ndarray:
    """The dense kernel of a dilated one: ``dilation - 1`` zeros between neighbouring taps."""
    if dilation == 1:
        return weight
    c_out, c_in, kh, kw = weight.shape
    out = np.zeros((c_out, c_in, kh + (kh - 1) * (dilation - 1), kw + (kw - 1) * (dilation - 1)))
    out[:, :, ::dilation, ::dilation] = weight
    return out


def singular_values(
    weight: Any, shape: tuple[int, int], *, groups: int = 1, dilation: int = 1
) -> np.ndarray:
    """All singular values of the conv operator ``weight`` on an ``shape`` map (circular
    approximation), ``[h, w, min(c_out, c_in)]`` (grouped: ``[c_out, h, w]``), float64."""
    if hasattr(weight, "detach"):  # a torch tensor, without importing torch here
        weight = weight.detach().cpu().double().numpy()
    w = expand_dilation(np.asarray(weight, dtype=np.float64), dilation)
    coeff = np.fft.fft2(w, s=tuple(shape), axes=(2, 3))  # [c_out, c_in/groups, h, w]
    if groups != 1:
        # Only depthwise convs (groups == c_in == c_out) are grouped in the DARTS ops; the
        # official code builds the diagonal matrix from each output channel's filter.
        if w.shape[1] != 1:
            raise ValueError(f"grouped conv with {w.shape[1]} inputs per group: depthwise only")
        return np.abs(coeff[:, 0])
    return np.linalg.svd(coeff.transpose(2, 3, 0, 1), compute_uv=False)


def stable_rank_fft(
    weight: Any, shape: tuple[int, int], *, groups: int = 1, dilation: int = 1
) -> float:
    """MSR-DARTS' stable rank computed as the official code does: sum sigma^2 / max
    sigma^2 over the per-frequency singular values of the conv operator on a ``shape``
    (h, w) map (module docstring)."""
    sq = singular_values(weight, shape, groups=groups, dilation=dilation) ** 2
    return float(sq.sum() / sq.max())


def stable_rank(
    weight: Any, shape: tuple[int, int], *, groups: int = 1, dilation: int = 1
) -> float:
    """MSR-DARTS' stable rank (:func:`stable_rank_fft`); a dense 1x1 conv, the only kind
    the search measures, by its closed form h*w*||W||_F^2 / sigma_1(W)^2 (one SVD of the
    ``c_out x c_in`` matrix instead of h*w: all 448 ops of a paper-size supernet in
    0.08 s instead of 23 s, measured on one CPU thread). Equal up to rounding
    (``tests/test_msr.py`` checks both against the official outputs)."""
    if hasattr(weight, "detach"):
        weight = weight.detach().cpu().double().numpy()
    w = np.asarray(weight, dtype=np.float64)
    if groups != 1 or w.shape[2:] != (1, 1):
        return stable_rank_fft(w, shape, groups=groups, dilation=dilation)
    m = w[:, :, 0, 0]
    return float(shape[0] * shape[1] * np.square(m).sum() / np.linalg.norm(m, 2) ** 2)
