"""The reference construction (``construct_kernel``) against closed forms."""

from __future__ import annotations

import torch

from dcls_core.construction.reference import construct_kernel


def test_gauss_kernel_analytic():
    """One weight at a known position: a separable, normalised Gaussian centred there."""
    weight = torch.tensor([[[2.0]]])
    P = torch.tensor([0.5, -1.0]).view(2, 1, 1, 1)  # P[0]: width, P[1]: height
    SIG = torch.tensor([0.23, 0.73]).view(2, 1, 1, 1)
    kernel = construct_kernel(weight, P, SIG, (5, 5), "gauss")[0, 0].double()
    grid = torch.arange(5, dtype=torch.float64)
    gw = torch.exp(-0.5 * ((grid - 2.5) / 0.5) ** 2)
    gh = torch.exp(-0.5 * ((grid - 1.0) / 1.0) ** 2)
    want = 2.0 * torch.outer(gh, gw) / (gh.sum() * gw.sum() + 1e-7)
    assert torch.allclose(kernel, want, atol=1e-6)


def test_v0_is_bilinear_and_unnormalised():
    weight = torch.tensor([[[3.0]]])
    P = torch.tensor([0.25, -0.5]).view(2, 1, 1, 1)  # v0: P[0] is height
    kernel = construct_kernel(weight, P, None, (4, 4), "v0")[0, 0]
    want = torch.zeros(4, 4)
    # height centre 2.25 -> rows 2 (0.75) and 3 (0.25); width centre 1.5 -> cols 1, 2 (0.5 each)
    want[2, 1] = want[2, 2] = 3 * 0.75 * 0.5
    want[3, 1] = want[3, 2] = 3 * 0.25 * 0.5
    assert torch.allclose(kernel, want)
