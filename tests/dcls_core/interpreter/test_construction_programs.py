"""The fused construction's GPU programs (:mod:`dcls_core.construction.programs`), launched through
:func:`dcls_core.construction.fused.launch_forward` / ``launch_backward`` on the CPU under Triton's
interpreter, against the float64 reference construction: one to three learned axes, every version,
the kernel and the gradients of weight, positions and sigmas (see ``conftest.py``)."""

from __future__ import annotations

import pytest
import torch

from dcls_core.construction import fused
from dcls_core.construction.reference import construct_kernel

from dcls_testing import rel_err

TOL = 2e-6
CASES = [  # (out, in/groups, *dense) prefix, learned sizes
    ((3, 2), (7, 6)),
    ((2, 2, 3), (9,)),
    ((3, 2), (5, 7, 6)),
    ((2, 1), (9, 4, 17)),
]


@pytest.mark.parametrize("version", ["v0", "v1", "max", "gauss"])
@pytest.mark.parametrize("prefix,sizes", CASES)
def test_programs_equal_float64_reference(prefix, sizes, version):
    torch.manual_seed(0)
    n = len(sizes)
    w = torch.randn(*prefix, 5, dtype=torch.float64)
    P = (torch.rand(n, *prefix, 5, dtype=torch.float64) - 0.5) * (min(sizes) - 1)
    S = torch.rand(n, *prefix, 5, dtype=torch.float64) - 0.5 if version in ("max", "gauss") else None
    params = [t.requires_grad_() for t in (w, P, S) if t is not None]
    want = construct_kernel(w, P, S, sizes, version)
    G = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, params, G)
    pf = [t.detach().float() for t in params]
    S32 = pf[2] if S is not None else None
    got = fused.launch_forward(pf[0], pf[1], S32, sizes, version)
    grads = [t for t in fused.launch_backward(G.float(), pf[0], pf[1], S32, sizes, version) if t is not None]
    assert rel_err(got, want.detach()) < TOL
    assert len(grads) == len(want_grads)
    for name, a, r in zip(("weight", "P", "SIG"), grads, want_grads):
        assert rel_err(a, r) < TOL, name
