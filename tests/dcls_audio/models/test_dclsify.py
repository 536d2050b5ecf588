"""dclsify: which convs become DCLS layers, their init, and the shared P/SIG tensors.

The shared positions must behave as one tensor everywhere: state_dict save/load, .to(),
deepcopy (EMA copies), optimizer grouping, EMA updates and DDP.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from dcls_audio.models import (
    count_parameters,
    create_model,
    dcls_position_parameters,
    dclsify,
    fold_dcls,
    is_depthwise_conv,
    tied_state_keys,
)
from dcls_core import Dcls2d

TINY = dict(depths=(2, 1, 2, 1), dims=(16, 32, 64, 128), kernel_count=8, dilated_kernel_size=9)


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_convnext(**overrides) -> nn.Module:
    torch.manual_seed(0)
    return create_model("convnext_dcls_audio_tiny", **{**TINY, **overrides})


def spectrogram(batch: int = 2, frames: int = 160) -> torch.Tensor:
    return torch.randn(batch, 1, 128, frames, generator=torch.Generator().manual_seed(1))


def blocks_dw(model: nn.Module) -> list[Dcls2d]:
    return [m for m in model.modules() if isinstance(m, Dcls2d)]


class Toy(nn.Module):
    """Depthwise convs of several widths and kernel sizes, a grouped and a dense conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.b = nn.Sequential(
            nn.Conv2d(8, 8, 7, padding=3, groups=8, bias=False), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        )
        self.grouped = nn.Conv2d(8, 16, 7, padding=3, groups=8)  # groups == in != out: not depthwise
        self.c = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.d = nn.Conv2d(8, 8, 7, padding=3, groups=8)  # narrower again: a new group
        self.dense = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = self.b(self.a(x))
        x = self.c(self.grouped(x))
        return self.d(self.dense(x))


def test_only_depthwise_convs_are_replaced_with_upstream_init():
    torch.manual_seed(0)
    model = dclsify(Toy(), kernel_count=5, dilated_kernel_size=9)
    assert [n for n, m in model.named_modules() if isinstance(m, Dcls2d)] == ["a", "b.0", "b.1", "c", "d"]
    assert isinstance(model.grouped, nn.Conv2d) and isinstance(model.dense, nn.Conv2d)
    for layer in blocks_dw(model):
        assert layer.groups == layer.in_channels == layer.out_channels
        assert layer.kernel_count == 5 and layer.dilated_kernel_size == (9, 9) and layer.padding == (4, 4)
        assert layer.version == "gauss"
    assert model.b[0].bias is None and model.a.bias is not None  # bias kept only where it was
    assert torch.count_nonzero(model.a.bias) == 0
    # weight ~ N(0, 0.02): check on a wide layer
    wide = dclsify(nn.Sequential(nn.Conv2d(512, 512, 7, groups=512)), kernel_count=26)[0]
    assert abs(wide.weight.std().item() - 0.02) < 0.002 and abs(wide.weight.mean().item()) < 0.002
    assert model(torch.randn(1, 8, 12, 12)).shape == (1, 8, 12, 12)


def test_only_kernel_size_and_errors():
    model = dclsify(Toy(), only_kernel_size=3)
    assert [n for n, m in model.named_modules() if isinstance(m, Dcls2d)] == ["b.1"]
    assert is_depthwise_conv(nn.Conv2d(4, 4, 7, groups=4), only_kernel_size=7)
    assert not is_depthwise_conv(nn.Conv2d(4, 4, 7, groups=4), only_kernel_size=3)
    with pytest.raises(ValueError, match="no 5x5 depthwise"):
        dclsify(Toy(), only_kernel_size=5)
    with pytest.raises(ValueError, match="dilated_kernel_size"):
        dclsify(Toy(), dilated_kernel_size=0)


def test_positions_shared_within_runs_of_equal_width():
    model = dclsify(Toy())
    a, b0, b1, c, d = model.a, model.b[0], model.b[1], model.c, model.d
    assert a.P is b0.P is b1.P and a.SIG is b0.SIG is b1.SIG
    assert c.P is not a.P and c.P.shape[1] == 16
    assert d.P is not a.P and d.P is not c.P  # a narrower layer starts its own group
    unshared = dclsify(Toy(), share_positions=False)
    assert len({id(m.P) for m in blocks_dw(unshared)}) == 5
    assert tied_state_keys(unshared) == []


def test_fastvit_converts_only_7x7_and_ties_cpe_with_last_stage():
    model = create_model(
        "fastvit_dcls_audio_sa24", depths=(1, 1, 1, 2), dims=(16, 32, 64, 128), kernel_count=4, dilated_kernel_size=9
    )
    names = [n for n, m in model.named_modules() if isinstance(m, Dcls2d)]
    assert names == [
        "stages.0.blocks.0.mlp.conv.conv",
        "stages.1.blocks.0.mlp.conv.conv",
        "stages.2.blocks.0.mlp.conv.conv",
        "stages.3.pos_emb.pos_enc",
        "stages.3.blocks.0.mlp.conv.conv",
        "stages.3.blocks.1.mlp.conv.conv",
    ]
    # the 3x3 RepMixer convs stay plain depthwise convs; the 7x7 downsampling convs are not depthwise
    assert any(is_depthwise_conv(m, 3) for m in model.modules())
    layers = dict(model.named_modules())
    cpe = layers["stages.3.pos_emb.pos_enc"]
    assert cpe.bias is not None and layers["stages.3.blocks.0.mlp.conv.conv"].bias is None
    assert cpe.P is layers["stages.3.blocks.0.mlp.conv.conv"].P is layers["stages.3.blocks.1.mlp.conv.conv"].P
    assert cpe.P is not layers["stages.2.blocks.0.mlp.conv.conv"].P
    assert model(spectrogram(1, 64)).shape == (1, 527)


def test_parameters_yield_each_shared_tensor_once():
    model = tiny_convnext()
    params = list(model.parameters())
    assert len({id(p) for p in params}) == len(params)
    positions = dcls_position_parameters(model)
    assert len(positions) == 2 * 4  # P and SIG per stage
    dims, depths, k = TINY["dims"], TINY["depths"], TINY["kernel_count"]
    per_block_dw = sum(d * k + d for d, n in zip(dims, depths) for _ in range(n))
    shared = sum(2 * 2 * d * k for d in dims)
    dense = count_parameters(create_model("convnext_audio_tiny", depths=TINY["depths"], dims=dims))
    dense_dw = sum(d * 49 + d for d, n in zip(dims, depths) for _ in range(n))
    assert count_parameters(model) == dense - dense_dw + per_block_dw + shared
    # the state_dict repeats the tied keys
    assert len(model.state_dict()) == len({id(v) for v in model.state_dict(keep_vars=True).values()}) + sum(
        len(g) - 1 for g in tied_state_keys(model)
    )


def test_state_dict_round_trip_keeps_ties_and_values():
    model = tiny_convnext()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = create_model("convnext_dcls_audio_tiny", **TINY)
    fresh.load_state_dict(loaded, strict=True)
    for a, b in zip(blocks_dw(model), blocks_dw(fresh)):
        assert torch.equal(a.P, b.P) and torch.equal(a.SIG, b.SIG) and torch.equal(a.weight, b.weight)
    assert [g for g in tied_state_keys(fresh)] == [g for g in tied_state_keys(model)]
    model.eval(), fresh.eval()
    x = spectrogram()
    torch.testing.assert_close(model(x), fresh(x), rtol=0, atol=0)


def test_to_and_deepcopy_keep_the_tie():
    model = tiny_convnext()
    stage0 = [m for m in blocks_dw(model) if m.in_channels == 16]
    model.to(torch.float64)
    assert stage0[0].P is stage0[1].P and stage0[0].P.dtype == torch.float64
    ema = copy.deepcopy(model)
    ema_stage0 = [m for m in blocks_dw(ema) if m.in_channels == 16]
    assert ema_stage0[0].P is ema_stage0[1].P and ema_stage0[0].P is not stage0[0].P
    assert count_parameters(ema) == count_parameters(model)


@pytest.mark.cuda
def test_cuda_move_keeps_the_tie():
    model = tiny_convnext().cuda()
    stage0 = [m for m in blocks_dw(model) if m.in_channels == 16]
    assert stage0[0].P is stage0[1].P and stage0[0].P.is_cuda
    assert model(spectrogram().cuda()).shape == (2, 527)


def _untied_copy(model: nn.Module) -> nn.Module:
    untied = copy.deepcopy(model)
    for layer in blocks_dw(untied):
        layer.P = nn.Parameter(layer.P.detach().clone())
        layer.SIG = nn.Parameter(layer.SIG.detach().clone())
    return untied


def test_shared_gradient_is_the_sum_and_one_optimizer_step_moves_it_once():
    model = tiny_convnext().train()
    untied = _untied_copy(model)
    x = spectrogram()
    torch.manual_seed(3)
    model(x).square().mean().backward()
    torch.manual_seed(3)  # same drop-path draws (none at rate 0) and same input
    untied(x).square().mean().backward()
    tied_layers, free_layers = blocks_dw(model), blocks_dw(untied)
    for width in (16, 32, 64, 128):
        tied = [m for m in tied_layers if m.in_channels == width]
        free = [m for m in free_layers if m.in_channels == width]
        torch.testing.assert_close(tied[0].P.grad, sum(m.P.grad for m in free), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(tied[0].SIG.grad, sum(m.SIG.grad for m in free), rtol=1e-5, atol=1e-8)

    # the upstream recipe's groups: positions (lr x5, no decay) and the rest; no tensor twice
    positions = dcls_position_parameters(model)
    ids = {id(p) for p in positions}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.SGD([{"params": rest}, {"params": positions, "lr": 0.5}], lr=0.1)
    before = {id(p): p.detach().clone() for p in positions}
    opt.step()
    for p in positions:
        torch.testing.assert_close(p.detach(), before[id(p)] - 0.5 * p.grad)
    torch.optim.AdamW([{"params": rest}, {"params": positions, "weight_decay": 0.0}])  # accepted


def test_ema_copies_update_each_shared_tensor_once():
    from timm.utils import ModelEmaV3
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = tiny_convnext()
    decay = 0.9
    timm_ema = ModelEmaV3(model, decay=decay, exclude_buffers=True)
    torch_ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    torch_ema.update_parameters(model)  # first call copies
    start = dcls_position_parameters(model)[0].detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    timm_ema.update(model)
    torch_ema.update_parameters(model)
    expected = decay * start + (1 - decay) * (start + 1.0)
    for ema_model in (timm_ema.module, torch_ema.module):
        p = dcls_position_parameters(ema_model)[0]
        torch.testing.assert_close(p.detach(), expected)
        stage0 = [m for m in blocks_dw(ema_model) if m.in_channels == 16]
        assert stage0[0].P is stage0[1].P


def test_ddp_keeps_ties_and_gradients(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = tiny_convnext().train()
    reference = copy.deepcopy(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        x = spectrogram()
        ddp(x).square().mean().backward()
        reference(x).square().mean().backward()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
        stage0 = [m for m in blocks_dw(model) if m.in_channels == 16]
        assert stage0[0].P is stage0[1].P
    finally:
        dist.destroy_process_group()


def test_fold_dcls_gives_plain_convs_with_the_same_output():
    model = tiny_convnext().eval()
    x = spectrogram()
    with torch.no_grad():
        expected = model(x)
        folded = fold_dcls(copy.deepcopy(model))
        assert not blocks_dw(folded)
        assert all(m.kernel_size == (9, 9) for m in folded.modules() if is_depthwise_conv(m))
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)


def test_matches_a_model_converted_with_the_reference_dcls_package():
    """Our conversion + tied layers against upstream's recipe with dcls 0.1.1 layers."""
    ref_modules = pytest.importorskip("DCLS.construct.modules")
    model = tiny_convnext().eval()
    reference = create_model("convnext_audio_tiny", depths=TINY["depths"], dims=TINY["dims"]).eval()
    width, P, SIG = 0, None, None
    for name, conv in [(n, m) for n, m in reference.named_modules() if is_depthwise_conv(m)]:
        layer = ref_modules.Dcls2d(
            conv.in_channels,
            conv.in_channels,
            kernel_count=8,
            dilated_kernel_size=9,
            padding=4,
            groups=conv.in_channels,
            version="gauss",
        )
        if width < conv.in_channels:
            width, P, SIG = conv.in_channels, layer.P, layer.SIG
        layer.P, layer.SIG = P, SIG
        parent, _, child = name.rpartition(".")
        setattr(reference.get_submodule(parent), child, layer)
    reference.load_state_dict(model.state_dict(), strict=True)
    x = spectrogram()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("version", ["v0", "v1", "max"])
def test_other_interpolations_share_positions_too(version):
    model = tiny_convnext(version=version)
    stage0 = [m for m in blocks_dw(model) if m.in_channels == 16]
    assert all(m.version == version for m in blocks_dw(model))
    assert stage0[0].P is stage0[1].P
    if version == "max":
        assert stage0[0].SIG is stage0[1].SIG
    else:
        assert stage0[0].SIG is None and len(dcls_position_parameters(model)) == 4
    assert model(spectrogram(1)).shape == (1, 527)
