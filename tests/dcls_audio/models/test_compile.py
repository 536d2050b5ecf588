"""The DCLS backbones under ``torch.compile`` on CUDA: one graph per forward (no graph break) with
the dispatcher's own rules, and the compiled step equal to the eager one.

A graph break inside a DCLS layer splits a compiled model at every block: each piece recompiles
per stage shape, CUDA graphs cover the pieces only, and the step runs at eager speed. The layers
here have the recipe's kernel (23x23 from 26 elements) and the model sees a full 10 s spectrogram,
so the stage shapes meet the cost rules the full models meet: every depthwise layer's tracing asks
the matrix path's rule, and ConvNeXt's layers take both the direct path (early stages) and the
matrix path (late stages), which the test checks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcls_audio.models import create_model
from dcls_core import dispatch

from dcls_testing import rel_err

MODELS = ("convnext_dcls_audio_tiny", "fastvit_dcls_audio_sa24", "convformer_dcls_audio_s18")
SMALL = dict(depths=(1, 1, 1, 1), dims=(32, 64, 128, 256), num_classes=10)


def _step(net, x, target):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x)
    loss = F.binary_cross_entropy_with_logits(out.float(), target)
    return out.detach().float(), torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad])


@pytest.mark.cuda
@pytest.mark.parametrize("name", MODELS)
def test_dcls_backbone_compiles_as_one_graph_and_matches_eager_cuda(monkeypatch, name):
    monkeypatch.setenv("DCLS_AUTOTUNE", "0")  # the rules: compiled calls never measure anyway
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = create_model(name, **SMALL).cuda()
    x = torch.randn(8, 1, 128, 1001, device="cuda")  # batch 8: the late stages have outputs enough to pay
    target = (torch.rand(8, 10, device="cuda") < 0.3).float()
    chosen = []
    conv_name = dispatch._conv_name
    with monkeypatch.context() as patch:  # the paths the rules give these layers (what tracing asks too)
        patch.setattr(dispatch, "_conv_name", lambda *a, **kw: chosen.append(conv_name(*a, **kw)) or chosen[-1])
        _step(net, x, target)
    if name.startswith("convnext"):
        assert {"matrix", "direct"} <= set(chosen), chosen
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)  # raises at a graph break
    try:
        net.train()
        got_out, got_grads = _step(compiled, x, target)
        want_out, want_grads = _step(net, x, target)
        assert rel_err(got_out, want_out) < 2e-2
        for got, want in zip(got_grads, want_grads):
            assert rel_err(got, want) < 5e-2
        net.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            assert rel_err(compiled(x).float(), net(x).float()) < 2e-2
    finally:
        torch._dynamo.reset()
