"""The matrix path's programs (:mod:`dcls_core.conv.matrix.programs`) on the CPU under Triton's
interpreter (see ``conftest.py``): the kernel gradient the tap-sum program sums from the products'
entries equals the torch gather-and-segment-sum, the matrices ``T`` the build program writes are
the torch gather's, and the whole path through either equals float64 ``F.conv``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcls_core.conv.matrix import conv as matrix_conv
from dcls_core.conv.matrix.conv import tap_tables

from dcls_testing import rel_err

CASES = [  # spatial in, kernel, stride, padding
    ((16, 15), (23, 23), (1, 1), (11, 11)),  # ConvNeXt-T stage 3: every tap reaches the input
    ((3, 40), (3, 5), (1, 1), (1, 2)),  # more output columns than one tile holds
    ((7, 37), (3, 9), (2, 2), (1, 4)),  # strides on both axes, two tiles of output columns
    ((8, 7), (15, 13), (1, 1), (7, 6)),  # stage 4, the kernel cut to what it reaches
    ((9, 11), (5, 7), (2, 1), (2, 3)),  # strides: some entries hold no tap
    ((6, 6), (3, 3), (1, 1), (0, 0)),  # no padding
    ((20,), (9,), (3,), (4,)),  # one axis
]


def _out_sizes(in_sizes, k_sizes, stride, padding):
    return [(s + 2 * p - k) // st + 1 for s, k, st, p in zip(in_sizes, k_sizes, stride, padding)]


@pytest.mark.parametrize("in_sizes,k_sizes,stride,padding", CASES)
def test_tap_sums_equal_the_segment_sums(in_sizes, k_sizes, stride, padding):
    torch.manual_seed(0)
    out_sizes = _out_sizes(in_sizes, k_sizes, stride, padding)
    c, s_in, s_out = 3, torch.Size(in_sizes).numel(), torch.Size(out_sizes).numel()
    entries = torch.randn(c, s_in, s_out)  # x^T @ dy: the segment sums' layout
    tables = tap_tables(in_sizes, out_sizes, k_sizes, stride, padding, torch.device("cpu"))
    want = matrix_conv._tap_sums_segments(entries, tables)
    transposed = entries.transpose(1, 2).contiguous()  # dy^T @ x: the program's layout
    got = matrix_conv._tap_sums_program(transposed, in_sizes, out_sizes, k_sizes, padding, stride)
    assert got.shape == want.shape == (c, torch.Size(k_sizes).numel())
    assert rel_err(got, want) < 1e-6


# the programs as the path takes them on CUDA: (switch, program, calls per step)
PATH_PROGRAMS = {
    "tap_sums": ("_use_tap_sum_program", "_tap_sums_program", 1),  # the kernel gradient
    "matrices": ("_use_build_program", "_matrices_program", 2),  # T for forward and input gradient
}


@pytest.mark.parametrize("part", list(PATH_PROGRAMS))
@pytest.mark.parametrize("in_sizes,k_sizes,stride,padding", CASES)
def test_the_path_through_a_program_equals_float64_conv(monkeypatch, in_sizes, k_sizes, stride, padding, part):
    """The path's forward and every gradient with one of its programs taking its part (as on
    CUDA) against float64 ``F.conv``."""
    switch, name, calls_per_step = PATH_PROGRAMS[part]
    calls = []
    program = getattr(matrix_conv, name)
    monkeypatch.setattr(matrix_conv, switch, lambda *args: True)
    monkeypatch.setattr(matrix_conv, name, lambda *a: calls.append(a) or program(*a))
    torch.manual_seed(1)
    n, c = 2, 3
    conv = {1: F.conv1d, 2: F.conv2d}[len(k_sizes)]
    x, k, b = torch.randn(n, c, *in_sizes), torch.randn(c, 1, *k_sizes), torch.randn(c)
    want_leaves = [t.double().requires_grad_() for t in (x, k, b)]
    want = conv(*want_leaves, stride=stride, padding=padding, groups=c)
    dy = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, want_leaves, dy)
    leaves = [t.clone().requires_grad_() for t in (x, k, b)]
    got = matrix_conv.matrix_dw_conv(*leaves, stride, padding, c)
    got_grads = torch.autograd.grad(got, leaves, dy.float())
    assert len(calls) == calls_per_step
    assert rel_err(got.double(), want) < 1e-5
    for g, w in zip(got_grads, want_grads):
        assert rel_err(g.double(), w) < 1e-5


# ----------------------------------------------------------------------------- the matrices T
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("in_sizes,k_sizes,stride,padding", CASES)
def test_matrices_program_equals_the_torch_gather(in_sizes, k_sizes, stride, padding, dtype):
    """``T`` written by the program has the torch gather's bits, from a kernel that is a strided
    view (the kernel cut leaves one). The taps are values of ``dtype``: the interpreter casts
    float32 to bfloat16 by truncation where the GPU rounds to nearest even, as torch does (the
    CUDA test compares unrounded taps)."""
    torch.manual_seed(2)
    out_sizes = _out_sizes(in_sizes, k_sizes, stride, padding)
    c = 3
    whole = torch.randn(c, 1, *[k + 4 for k in k_sizes]).to(dtype).float()
    k = whole[(slice(None), slice(None), *[slice(2, 2 + k) for k in k_sizes])]  # a view, not contiguous
    tables = tap_tables(in_sizes, out_sizes, k_sizes, stride, padding, torch.device("cpu"))
    want = matrix_conv._matrices(k, tables, torch.Size(in_sizes).numel(), torch.Size(out_sizes).numel(), dtype)
    got = matrix_conv._matrices_program(k, in_sizes, out_sizes, padding, stride, dtype)
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.equal(got, want)


def test_with_both_programs_a_step_looks_up_no_index_tables(monkeypatch):
    """The index tables serve only the torch build and sums: with both programs (as on CUDA by
    default) a training step never asks for them."""
    monkeypatch.setattr(matrix_conv, "_use_build_program", lambda *args: True)
    monkeypatch.setattr(matrix_conv, "_use_tap_sum_program", lambda *args: True)

    def no_tables(*args):
        raise AssertionError("index tables looked up")

    monkeypatch.setattr(matrix_conv, "tap_tables", no_tables)
    x = torch.randn(2, 3, 8, 7, requires_grad=True)
    k = torch.randn(3, 1, 15, 13, requires_grad=True)
    y = matrix_conv.matrix_dw_conv(x, k, None, (1, 1), (7, 6), 3)
    dx, dk = torch.autograd.grad(y.square().sum(), (x, k))
    want = F.conv2d(x, k, None, 1, (7, 6), 1, 3)
    assert rel_err(y, want) < 1e-5 and dx.shape == x.shape and dk.shape == k.shape
