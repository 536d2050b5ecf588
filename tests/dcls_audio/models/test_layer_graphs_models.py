"""The DCLS backbones trained eagerly on CUDA with their DCLS layers replayed as CUDA graphs
(``dcls_core.conv.layer_graphs``, ``DCLS_LAYER_GRAPHS=1``) against the same steps with every call eager
(``DCLS_LAYER_GRAPHS=0``): outputs and updated parameters agree step by step, and every DCLS
layer the step calls replays its graphs from the third step on."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcls_audio.models import create_model
from dcls_core.conv import layer_graphs
from dcls_core.modules import _DclsBase

from dcls_testing import rel_err

MODELS = ("convnext_dcls_audio_tiny", "fastvit_dcls_audio_sa24", "convformer_dcls_audio_s18")
SMALL = dict(depths=(1, 1, 1, 1), dims=(32, 64, 128, 256), num_classes=10, drop_path_rate=0.0)
STEPS = 4


def _train_step(net, opt, x, target, monkeypatch, graphs: str) -> torch.Tensor:
    monkeypatch.setenv(layer_graphs.ENV_VAR, graphs)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x)
    F.binary_cross_entropy_with_logits(out.float(), target).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.detach().float()


@pytest.mark.cuda
@pytest.mark.parametrize("name", MODELS)
def test_graphed_dcls_layers_train_as_eager_ones_cuda(monkeypatch, name):
    torch.manual_seed(0)
    graphed = create_model(name, **SMALL).cuda().train()
    eager = copy.deepcopy(graphed)
    called: dict[str, nn.Module] = {}  # the DCLS layers a training step calls (module order)
    for key, m in graphed.named_modules():
        if isinstance(m, _DclsBase):
            m.register_forward_pre_hook(lambda mod, args, key=key: called.setdefault(key, mod))
    # SGD: updates linear in the gradients (Adam would scale rounding noise of near-zero gradients up)
    opts = {id(net): torch.optim.SGD(net.parameters(), lr=0.1) for net in (graphed, eager)}
    for step in range(STEPS):
        x = torch.randn(8, 1, 128, 1001, device="cuda")
        target = (torch.rand(8, 10, device="cuda") < 0.3).float()
        got = _train_step(graphed, opts[id(graphed)], x, target, monkeypatch, "1")
        want = _train_step(eager, opts[id(eager)], x, target, monkeypatch, "0")
        assert rel_err(got, want) < 2e-2, f"step {step}"
        for (key, p), q in zip(graphed.named_parameters(), eager.parameters()):
            assert rel_err(p.detach(), q.detach()) < 1e-3, f"step {step}: {key}"
    assert called  # (a DCLS layer a step does not call has nothing to record)
    for key, layer in called.items():  # warmed up, recorded, then replayed
        assert layer_graphs.recorded(layer) == [(True, True, STEPS - 2)], key
