"""The DCLS backbones trained eagerly with their DCLS layers replayed as CUDA graphs
(``dcls_core.conv.layer_graphs``, ``DCLS_LAYER_GRAPHS=1``) against the same steps with every call eager
(``DCLS_LAYER_GRAPHS=0``): outputs and updated parameters agree step by step, and every DCLS
layer the step calls replays its graphs from the third step on. On CUDA, and on the CPU with CUDA
graphs emulated (``tests/emulated_cuda_graphs.py``; a smaller spectrogram, float32, no autocast)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcls_audio.models import create_model
from dcls_core.conv import layer_graphs
from dcls_core.modules import _DclsBase

from dcls_testing import rel_err
from emulated_cuda_graphs import layer_graphs_device

MODELS = ("convnext_dcls_audio_tiny", "fastvit_dcls_audio_sa24", "convformer_dcls_audio_s18")
SMALL = dict(depths=(1, 1, 1, 1), dims=(32, 64, 128, 256), num_classes=10, drop_path_rate=0.0)
STEPS = 4


def _train_step(net, opt, x, target, monkeypatch, graphs: str) -> torch.Tensor:
    monkeypatch.setenv(layer_graphs.ENV_VAR, graphs)
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if x.is_cuda else contextlib.nullcontext()
    with cast:
        out = net(x)
    F.binary_cross_entropy_with_logits(out.float(), target).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.detach().float()


@pytest.mark.parametrize("kind", ["emulated", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("name", MODELS)
def test_graphed_dcls_layers_train_as_eager_ones(monkeypatch, name, kind):
    device = layer_graphs_device(kind, monkeypatch)
    torch.manual_seed(0)
    graphed = create_model(name, **SMALL).to(device).train()
    eager = copy.deepcopy(graphed)
    called: dict[str, nn.Module] = {}  # the DCLS layers a training step calls (module order)
    for key, m in graphed.named_modules():
        if isinstance(m, _DclsBase):
            m.register_forward_pre_hook(lambda mod, args, key=key: called.setdefault(key, mod) and None)
    # SGD: updates linear in the gradients (Adam would scale rounding noise of near-zero gradients up)
    opts = {id(net): torch.optim.SGD(net.parameters(), lr=0.1) for net in (graphed, eager)}
    batch, frames = (8, 1001) if device == "cuda" else (2, 256)
    tol_out, tol_param = (2e-2, 1e-3) if device == "cuda" else (1e-6, 1e-6)
    for step in range(STEPS):
        x = torch.randn(batch, 1, 128, frames, device=device)
        target = (torch.rand(batch, 10, device=device) < 0.3).float()
        got = _train_step(graphed, opts[id(graphed)], x, target, monkeypatch, "1")
        want = _train_step(eager, opts[id(eager)], x, target, monkeypatch, "0")
        assert rel_err(got, want) < tol_out, f"step {step}"
        for (key, p), q in zip(graphed.named_parameters(), eager.parameters()):
            assert rel_err(p.detach(), q.detach()) < tol_param, f"step {step}: {key}"
    assert called  # (a DCLS layer a step does not call has nothing to record)
    for key, layer in called.items():  # warmed up, recorded, then replayed
        assert layer_graphs.recorded(layer) == [(True, True, STEPS - 2)], key
