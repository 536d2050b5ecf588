"""The matrix depthwise convolution (one batched GEMM per call) against float64 ``F.conv``.

On the CPU in float64 for one to three axes, strides, bias, layouts and unbatched inputs; on CUDA
in every precision for the ConvNeXt late-stage shapes, as the path of a ``Dcls2d`` layer, and
under ``torch.compile``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import dcls_core
from dcls_core import dispatch
from dcls_core.conv import matrix
from dcls_core.conv.matrix import conv as matrix_conv
from dcls_core.conv.matrix.conv import tap_tables

from dcls_testing import (
    AUTOCAST,
    TOL,
    check_depthwise_against_float64,
    compare_to_fp64,
    compile_matches_eager,
    randomise,
    rel_err,
)

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

CASES = [
    # N, C, spatial, kernel, stride, padding
    (2, 3, (8, 7), (23, 23), (1, 1), (11, 11)),  # the kernel larger than the input
    (2, 3, (8, 7), (15, 13), (1, 1), (7, 6)),  # the same, cut to what it reaches
    (3, 4, (9, 11), (5, 7), (2, 1), (2, 3)),  # strides
    (2, 5, (6, 6), (3, 3), (1, 1), (0, 0)),  # no padding
    (3, 2, (20,), (9,), (3,), (4,)),
    (2, 2, (4, 5, 6), (3, 5, 3), (1, 2, 1), (1, 2, 0)),
]


def _float64_case(case, seed=0):
    n, c, spatial, ksize, stride, padding = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *spatial, dtype=torch.float64, generator=g)
    k = torch.randn(c, 1, *ksize, dtype=torch.float64, generator=g)
    b = torch.randn(c, dtype=torch.float64, generator=g)
    return x, k, b


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matrix_equals_conv_in_float64(case, with_bias):
    _, c, spatial, _, stride, padding = case
    x, k, b = (t.requires_grad_() for t in _float64_case(case))
    bias = b if with_bias else None
    want = CONV[len(spatial)](x, k, bias, stride, padding, 1, c)
    got = matrix.matrix_dw_conv(x, k, bias, stride, padding, c)
    assert got.shape == want.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(want)
    leaves = (x, k, b) if with_bias else (x, k)
    for name, g, w in zip("xkb", torch.autograd.grad(got, leaves, dy), torch.autograd.grad(want, leaves, dy)):
        torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-11, msg=f"gradient of {name}")


def test_matrix_takes_any_layout_and_unbatched_inputs():
    x, k, b = _float64_case(CASES[0])
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    got = matrix.matrix_dw_conv(x_cl, k, b, (1, 1), (11, 11), 3)
    want = F.conv2d(x, k, b, 1, 11, 1, 3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    ones = torch.ones((), dtype=torch.float64).expand_as(got)  # an expanded (stride 0) gradient
    (gx,) = torch.autograd.grad(got, (x_cl,), ones)
    x_ref = x.clone().requires_grad_()
    (want_gx,) = torch.autograd.grad(F.conv2d(x_ref, k, b, 1, 11, 1, 3), (x_ref,), torch.ones_like(want))
    torch.testing.assert_close(gx, want_gx, rtol=1e-12, atol=1e-12)
    single = matrix.matrix_dw_conv(x[0], k, b, (1, 1), (11, 11), 3)
    torch.testing.assert_close(single, want[0], rtol=1e-12, atol=1e-12)


def test_matrix_refuses_what_it_does_not_compute():
    x = torch.randn(2, 4, 6, 6)
    assert not matrix.supports(x, (4, 4, 3, 3), (1, 1), 1)  # channel mixing
    assert not matrix.supports(x.int(), (4, 1, 3, 3), (1, 1), 4)
    with pytest.raises(ValueError, match="matrix_dw_conv: needs"):
        matrix.matrix_dw_conv(x, torch.randn(4, 4, 3, 3), None, (1, 1), (1, 1), 1)
    assert not matrix.pays(torch.randn(8, 384, 16, 15), (384, 1, 23, 23), (1, 1), 384)  # the CPU


def test_tap_tables_list_every_reachable_pair_once_by_tap():
    in_sizes, out_sizes, k_sizes = (5, 4), (5, 4), (7, 5)
    tables = tap_tables(in_sizes, out_sizes, k_sizes, (1, 1), (3, 2), torch.device("cpu"))
    taps = 35
    gather, order, lengths = tables
    assert gather.shape == (20 * 20,)
    assert gather.dtype == order.dtype == torch.int32  # half the index bytes of int64 per gathered entry
    pairs = [
        (r0 * 4 + r1) * 20 + (o0 * 4 + o1)
        for r0 in range(5)
        for r1 in range(4)
        for o0 in range(5)
        for o1 in range(4)
        if 0 <= r0 - o0 + 3 < 7 and 0 <= r1 - o1 + 2 < 5
    ]
    assert sorted(order.tolist()) == pairs  # the entries that hold a tap, each once
    assert (gather[order].diff() >= 0).all()  # sorted by tap
    assert int(lengths.sum()) == len(pairs) and lengths.shape == (taps,)
    assert int((gather == taps).sum()) == 400 - len(pairs)
    r0, r1, o0, o1 = 4, 0, 2, 1  # one entry by hand: tap (r0 - o0 + 3, r1 - o1 + 2) = (5, 1)
    assert int(gather[(r0 * 4 + r1) * 20 + o0 * 4 + o1]) == 5 * 5 + 1


def test_tables_of_a_new_shape_are_refused_during_graph_capture(monkeypatch):
    """Under capture the tables could not be copied to the device: a clear error, not a broken graph."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="run the call once before capturing"):
        matrix_conv._to_device_outside_graph_pools([torch.arange(3).numpy()], torch.device("cuda", 0))


def test_an_error_on_the_table_thread_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    def broken(array):
        raise ValueError("no tables here")

    monkeypatch.setattr(torch, "from_numpy", broken)
    with pytest.raises(ValueError, match="no tables here"):
        matrix_conv._to_device_outside_graph_pools([torch.arange(3).numpy()], torch.device("cuda", 0))


MODES = ["fp32", "bf16", "fp16"]
SHAPES = [
    # N, C, H, W, kH, kW, pH, pW
    (8, 96, 16, 15, 23, 23, 11, 11),  # ConvNeXt-T stage 3 (fewer channels)
    (8, 96, 8, 7, 23, 23, 11, 11),  # stage 4, uncut
    (8, 96, 8, 7, 15, 13, 7, 6),  # stage 4, cut to what it reaches
]


# the GPU programs of the path, each against its torch form: the kernel gradient's sums (the torch
# segment sums or the program, the default) and the build of T (the torch gather, the default, or
# the program)
PROGRAMS = pytest.mark.parametrize(
    "tap_sum_program,build_program",
    [(False, False), (True, False), (True, True)],
    ids=["segments-gather", "program-gather", "program-build"],
)


@pytest.mark.cuda
@PROGRAMS
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_matrix_equals_float64_cuda(shape, mode, tap_sum_program, build_program, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(matrix_conv, "_TAP_SUMS_PROGRAM", tap_sum_program)
    monkeypatch.setattr(matrix_conv, "_BUILD_PROGRAM", build_program)
    check_depthwise_against_float64(matrix.matrix_dw_conv, shape, mode, TOL[mode])


@pytest.mark.cuda
@PROGRAMS
def test_matrix_kernel_gradient_is_deterministic_cuda(monkeypatch, tap_sum_program, build_program):
    monkeypatch.setattr(matrix_conv, "_TAP_SUMS_PROGRAM", tap_sum_program)
    monkeypatch.setattr(matrix_conv, "_BUILD_PROGRAM", build_program)
    x, k, b = (t.float().cuda() for t in _float64_case((16, 64, (16, 15), (23, 23), (1, 1), (11, 11))))
    k.requires_grad_()
    dy = torch.randn(16, 64, 16, 15, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first = torch.autograd.grad(matrix.matrix_dw_conv(x, k, b, (1, 1), (11, 11), 64), k, dy)[0]
        again = torch.autograd.grad(matrix.matrix_dw_conv(x, k, b, (1, 1), (11, 11), 64), k, dy)[0]
    assert torch.equal(first, again)


@pytest.mark.cuda
@PROGRAMS
def test_matrix_passes_never_wait_for_the_device_cuda(monkeypatch, tap_sum_program, build_program):
    monkeypatch.setattr(matrix_conv, "_TAP_SUMS_PROGRAM", tap_sum_program)
    monkeypatch.setattr(matrix_conv, "_BUILD_PROGRAM", build_program)
    x, k, b = (t.float().cuda().requires_grad_() for t in _float64_case((16, 64, (16, 15), (23, 23), (1, 1), (11, 11))))
    dy = torch.randn(16, 64, 16, 15, device="cuda")
    matrix.matrix_dw_conv(x, k, b, (1, 1), (11, 11), 64)  # index tables built (copied to the device) once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = matrix.matrix_dw_conv(x, k, b, (1, 1), (11, 11), 64)
        torch.autograd.grad(y, (x, k, b), dy)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.cuda
@pytest.mark.parametrize("version", ["v0", "gauss"])
@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_dcls2d_on_matrix_path_equals_float64_cuda(monkeypatch, version, mode):
    """The ConvNeXt DCLS layer at a late-stage size goes to the matrix path on the auto rules
    and equals the float64 reference, every gradient."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    layer = randomise(
        dcls_core.Dcls2d(32, 32, kernel_count=26, dilated_kernel_size=23, padding=11, groups=32, version=version)
    )
    x = torch.randn(16, 32, 16, 15)
    with torch.autocast("cuda", dtype=AUTOCAST.get(mode, torch.float32), enabled=mode in AUTOCAST):
        kernel = layer.cuda().construct_kernel()
        assert dispatch.select_conv(x.cuda(), kernel, (1, 1), (11, 11), 32, "zeros")[0] == "matrix"
    compare_to_fp64(monkeypatch, layer.cpu(), x, "auto", TOL[mode], AUTOCAST.get(mode), device="cuda")


def test_torch_compile_matrix_matches_eager_cpu():
    """The matrix path's custom ops under torch.compile (aot_eager: no C++ compiler needed)."""
    torch._dynamo.reset()
    with dispatch.forced(conv="matrix"):
        compile_matches_eager("cpu", "aot_eager")


def test_cost_rule_sizes_trace_without_a_graph_break_under_dynamic_shapes():
    """``pays`` runs while a compiled model is traced (every depthwise layer on CUDA asks it): its
    sizes must trace as one graph, symbolic shapes included (a generator handed to ``math.prod``
    broke the graph at every layer)."""
    torch._dynamo.reset()

    def sizes(x):
        s_in, s_out = matrix_conv._matrix_sizes(x, (4, 1, 23, 23), (2, 1))
        return x.sum() * s_in + s_out

    x = torch.randn(2, 4, 9, 11)
    assert sizes(x).item() == pytest.approx(x.sum().item() * 99 + 5 * 11)
    compiled = torch.compile(sizes, backend="eager", fullgraph=True, dynamic=True)
    for shape in ((2, 4, 9, 11), (3, 4, 16, 15)):
        x = torch.randn(shape)
        assert torch.allclose(compiled(x), sizes(x))


@pytest.mark.parametrize(
    "variable,switch,value,on",
    [
        ("TAP_SUMS_ENV_VAR", "_TAP_SUMS_PROGRAM", None, True),
        ("TAP_SUMS_ENV_VAR", "_TAP_SUMS_PROGRAM", "program", True),
        ("TAP_SUMS_ENV_VAR", "_TAP_SUMS_PROGRAM", "segments", False),
        ("TAP_SUMS_ENV_VAR", "_TAP_SUMS_PROGRAM", " Segments ", False),
        ("BUILD_ENV_VAR", "_BUILD_PROGRAM", None, True),
        ("BUILD_ENV_VAR", "_BUILD_PROGRAM", "program", True),
        ("BUILD_ENV_VAR", "_BUILD_PROGRAM", "torch", False),
        ("BUILD_ENV_VAR", "_BUILD_PROGRAM", " Torch ", False),
    ],
)
def test_program_switches_read_their_variables_at_import(variable, switch, value, on):
    """``DCLS_MATRIX_TAP_SUMS``: the tap-sum program unless ``segments``; ``DCLS_MATRIX_BUILD``:
    the matrices program unless ``torch``."""
    name = getattr(matrix_conv, variable)
    env = {k: v for k, v in os.environ.items() if k != name}
    if value is not None:
        env[name] = value
    code = f"from dcls_core.conv.matrix import conv; print(conv.{switch})"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(on)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("in_sizes,k_sizes,padding", [((16, 15), (23, 23), (11, 11)), ((8, 7), (15, 13), (7, 6))])
def test_matrices_program_equals_the_torch_gather_cuda(monkeypatch, in_sizes, k_sizes, padding, dtype):
    """``T`` at the ConvNeXt-T late-stage shapes on the GPU, float32 taps cast to ``dtype``: the
    program's bits are the torch gather's (the stage-4 kernel a cut view, as the model hands it)."""
    monkeypatch.setattr(matrix_conv, "_BUILD_PROGRAM", True)
    torch.manual_seed(0)
    whole = torch.randn(384, 1, 23, 23, device="cuda")
    cut = [(23 - k) // 2 for k in k_sizes]
    k = whole[:, :, cut[0] : cut[0] + k_sizes[0], cut[1] : cut[1] + k_sizes[1]]
    assert matrix_conv._use_build_program(k, dtype)
    tables = tap_tables(in_sizes, in_sizes, k_sizes, (1, 1), padding, k.device)
    s = in_sizes[0] * in_sizes[1]
    want = matrix_conv._matrices(k, tables, s, s, dtype)
    got = matrix_conv._matrices_program(k, in_sizes, in_sizes, padding, (1, 1), dtype)
    assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("in_sizes,k_sizes,padding", [((16, 15), (23, 23), (11, 11)), ((8, 7), (15, 13), (7, 6))])
def test_tap_sum_program_equals_the_segment_sums_cuda(monkeypatch, in_sizes, k_sizes, padding):
    """The kernel gradient's sums at the ConvNeXt-T late-stage shapes on the GPU: the program (what
    CUDA float32 entries take by default) against the gather and segment sum, and the same bits
    on every run."""
    monkeypatch.setattr(matrix_conv, "_TAP_SUMS_PROGRAM", True)
    torch.manual_seed(0)
    out_sizes = list(in_sizes)
    entries = torch.randn(384, in_sizes[0] * in_sizes[1], out_sizes[0] * out_sizes[1], device="cuda")
    assert matrix_conv._use_tap_sum_program(entries, torch.float32, k_sizes)
    tables = tap_tables(in_sizes, out_sizes, k_sizes, (1, 1), padding, entries.device)
    want = matrix_conv._tap_sums_segments(entries.double(), tables)
    transposed = entries.transpose(1, 2).contiguous()  # the program reads dy^T @ x
    got = matrix_conv._tap_sums_program(transposed, in_sizes, out_sizes, k_sizes, padding, (1, 1))
    assert rel_err(got.double(), want) < 1e-6
    again = matrix_conv._tap_sums_program(transposed, in_sizes, out_sizes, k_sizes, padding, (1, 1))
    assert torch.equal(got, again)


@pytest.mark.cuda
def test_torch_compile_matrix_matches_eager_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch._dynamo.reset()
    with dispatch.forced(conv="matrix"):
        compile_matches_eager("cuda", "inductor")


@pytest.mark.cuda
@PROGRAMS
def test_cuda_graphs_over_a_shape_not_seen_before_cuda(monkeypatch, tap_sum_program, build_program):
    """``torch.compile(mode="reduce-overhead")`` whose first call meets a new call shape: the
    index tables are made outside the CUDA graphs' memory pool (cudagraph trees reject a cached
    tensor made inside it), and the replayed steps equal eager, every gradient."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(matrix_conv, "_TAP_SUMS_PROGRAM", tap_sum_program)
    monkeypatch.setattr(matrix_conv, "_BUILD_PROGRAM", build_program)
    monkeypatch.setattr(matrix_conv, "_TABLES", {})
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = randomise(dcls_core.Dcls2d(32, 32, kernel_count=26, dilated_kernel_size=23, padding=11, groups=32))
    layer = layer.cuda()
    x = torch.randn(16, 32, 16, 15, device="cuda", requires_grad=True)
    leaves = [x, *layer.parameters()]
    with dispatch.forced(conv="matrix"):
        compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):  # warm-up, recording, replay
            torch.compiler.cudagraph_mark_step_begin()
            out = compiled(x)
            got = [out.detach().clone(), *torch.autograd.grad(out.square().sum(), leaves)]
        # the tables of the shape, made once, unless both programs take the parts that read them
        assert len(matrix_conv._TABLES) == (0 if tap_sum_program and build_program else 1)
        want_out = layer(x)
        want = [want_out.detach(), *torch.autograd.grad(want_out.square().sum(), leaves)]
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-4


def test_a_matrix_gradient_error_is_relative_to_float64_cpu_float32():
    """float32 on the CPU: products and the kernel-gradient sums within float32 accuracy."""
    x, k, b = (t.float().requires_grad_() for t in _float64_case(CASES[0]))
    got = matrix.matrix_dw_conv(x, k, b, (1, 1), (11, 11), 3)
    x64, k64, b64 = (t.detach().double().requires_grad_() for t in (x, k, b))
    want = F.conv2d(x64, k64, b64, 1, 11, 1, 3)
    dy = torch.randn_like(want)
    assert rel_err(got, want) < TOL["fp32"]
    for g, w in zip(torch.autograd.grad(got, (x, k, b), dy.float()), torch.autograd.grad(want, (x64, k64, b64), dy)):
        assert rel_err(g, w) < TOL["fp32"]


@pytest.mark.parametrize("cut", [False, True])
def test_matrix_custom_ops_pass_opcheck(cut):
    """The ops' fake implementations give the real outputs' shapes, dtypes and strides (what
    torch.compile relies on), forward and backward; also for a kernel that is a cut (strided) view."""
    xc = torch.randn(3, 2, 56)  # (C, N, S_in) of an 8x7 input
    k = torch.randn(3, 1, 23, 23)[:, :, 4:19, 5:18] if cut else torch.randn(3, 1, 15, 13)
    b = torch.randn(3)
    forward = torch.ops.dcls_core.matrix_dw_conv.default
    backward = torch.ops.dcls_core.matrix_dw_conv_backward.default
    settings = ([8, 7], [8, 7], [7, 6], [1, 1])
    for result in (
        torch.library.opcheck(forward, (xc.requires_grad_(), k.requires_grad_(), b, *settings)),
        torch.library.opcheck(
            backward, (torch.randn(3, 2, 56), xc.detach(), k.detach(), b, *settings, True, True, True)
        ),
    ):
        assert set(result.values()) == {"SUCCESS"}, result
