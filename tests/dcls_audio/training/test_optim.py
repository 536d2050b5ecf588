"""Optimizer groups, the warm-up cosine schedule, EMA, fine-tuning and frozen positions."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from torch import nn

from dcls_audio.models import (
    create_model,
    dcls_position_parameters,
    save_upstream_checkpoint,
)
from dcls_audio.training.ema import make_ema, update_ema
from dcls_audio.training.module import AudioTaggingModule
from dcls_audio.training.optim import (
    build_optimizer,
    cosine_with_warmup,
    lr_lambda,
    param_groups,
    scaled_lr,
)

TINY = dict(depths=(2, 1, 1, 1), dims=(8, 16, 32, 64), kernel_count=4, dilated_kernel_size=5)


def _tiny_net(num_classes=527, **kwargs):
    torch.manual_seed(0)
    return create_model("convnext_dcls_audio_tiny", num_classes=num_classes, **TINY, **kwargs)


def _tiny_module(num_classes=527, **kwargs):
    torch.manual_seed(0)
    return AudioTaggingModule("convnext_dcls_audio_tiny", num_classes, model_kwargs=dict(TINY), **kwargs)


def test_param_groups_follow_the_recipe():
    net = _tiny_net()
    opt = build_optimizer(net, "adamw", lr=1e-3, weight_decay=0.05, position_lr_scale=5.0)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["positions"]["lr"] == pytest.approx(5e-3) and groups["positions"]["weight_decay"] == 0
    assert groups["no_decay"]["lr"] == pytest.approx(1e-3) and groups["no_decay"]["weight_decay"] == 0
    assert groups["decay"]["lr"] == pytest.approx(1e-3) and groups["decay"]["weight_decay"] == 0.05
    kind = {id(p): name for name, g in groups.items() for p in g["params"]}
    seen = set()
    for name, p in net.named_parameters(remove_duplicate=False):
        leaf = name.rsplit(".", 1)[-1]
        expected = "positions" if leaf in ("P", "SIG") else "no_decay" if leaf == "bias" or p.ndim == 1 else "decay"
        assert kind[id(p)] == expected, name
        seen.add(id(p))
    # P and SIG are shared by the two layers of stage 0: each tensor appears once
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(listed) == len(set(listed)) == len(seen)
    positions = {id(p) for p in dcls_position_parameters(net)}
    assert {id(p) for p in groups["positions"]["params"]} == positions and len(positions) == 8


def test_lamb_and_unknown_optimizers():
    net = _tiny_net()
    opt = build_optimizer(net, "lamb", lr=2e-3, weight_decay=0.05, position_lr_scale=5.0)
    assert type(opt).__name__ == "Lamb"
    assert {g["name"]: g["lr"] for g in opt.param_groups}["positions"] == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="optim.optimizer: cannot create 'nosuchopt'"):
        build_optimizer(net, "nosuchopt", lr=1e-3, weight_decay=0.0, position_lr_scale=1.0)


def test_schedule_values():
    base, low, warm, total = 4e-3, 1e-6, 4, 24
    values = [cosine_with_warmup(s, total, warm, base, low) for s in range(total + 2)]
    assert values[:4] == pytest.approx([base / 4, base / 2, 3 * base / 4, base])
    assert values[warm] == pytest.approx(base)
    assert values[warm + (total - warm) // 2] == pytest.approx((base + low) / 2)
    assert values[total] == pytest.approx(low) and values[total + 1] == pytest.approx(low)
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1 :]))
    for s in (0, 7, 13):
        expected = (
            low + (base - low) * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
            if s >= warm
            else base * (s + 1) / warm
        )
        assert values[s] == pytest.approx(expected)


def test_scheduler_keeps_the_position_factor():
    net = _tiny_net()
    opt = build_optimizer(net, "adamw", lr=1e-3, weight_decay=0.05, position_lr_scale=5.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(10, 2, 1e-3, 1e-5))
    for step in range(6):
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        expected = cosine_with_warmup(step, 10, 2, 1e-3, 1e-5)
        assert lrs["decay"] == pytest.approx(expected)
        assert lrs["positions"] == pytest.approx(5 * expected)
        opt.step()
        sched.step()


def test_linear_lr_scaling():
    assert scaled_lr(4e-3, 128, 4096) == pytest.approx(1.25e-4)
    assert scaled_lr(4e-3, 1024, 4096) == pytest.approx(1e-3)
    assert scaled_lr(4e-3, 128, None) == 4e-3


def test_ema_update_matches_the_formula_and_keeps_shared_positions():
    net = _tiny_net()
    ema = make_ema(net)
    assert not any(p.requires_grad for p in ema.parameters())
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    update_ema(ema, net, decay=0.9)
    after, current = ema.state_dict(), net.state_dict()
    for key, old in before.items():
        if old.is_floating_point():
            torch.testing.assert_close(after[key], 0.9 * old + 0.1 * current[key])
    layers = [m for m in ema.modules() if hasattr(m, "P")]
    assert layers[0].P is layers[1].P  # tie preserved in the copy


def _plain_ema_update(ema, net, decay):
    """The reference: walk both modules and update tensor by tensor."""
    with torch.no_grad():
        for e, n in zip([*ema.parameters(), *ema.buffers()], [*net.parameters(), *net.buffers()], strict=True):
            if e.is_floating_point():
                e.lerp_(n.to(e.dtype), 1.0 - decay)
            else:
                e.copy_(n)


def _train_a_little(net, generator):
    """Moves every weight, the batch-norm statistics and its integer step counter."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
        net["bn"].train()(torch.randn(8, 4, generator=generator, dtype=net["bn"].weight.dtype))


def _assert_same_state(ema, reference):
    for (key, value), expected in zip(ema.state_dict().items(), reference.state_dict().values(), strict=True):
        assert value.dtype == expected.dtype and torch.equal(value, expected), key


def test_cached_ema_update_equals_a_plain_update_across_moves_and_loads():
    net = nn.ModuleDict({"dcls": _tiny_net(num_classes=5), "bn": nn.BatchNorm1d(4)})
    ema, reference = make_ema(net), make_ema(net)
    g = torch.Generator().manual_seed(0)

    def step(net, decay=0.9):
        _train_a_little(net, g)
        update_ema(ema, net, decay)
        _plain_ema_update(reference, net, decay)
        _assert_same_state(ema, reference)

    for decay in (0.9, 0.5, 0.99):  # the pairs are collected once and reused
        step(net, decay)
    assert int(ema["bn"].num_batches_tracked) == 3
    ema.double()  # new storage for the EMA: a float64 EMA of a float32 network
    reference.double()
    step(net)
    net.double()  # new storage for the network too
    step(net)
    ema.load_state_dict(net.state_dict())  # copied in place: the pairs stay valid
    reference.load_state_dict(net.state_dict())
    step(net)
    other = copy.deepcopy(net)  # another network: the pairs follow it
    step(other)


def test_finetune_with_a_new_head_from_a_state_dict_and_an_upstream_pth(tmp_path):
    source = _tiny_net(num_classes=527)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    save_upstream_checkpoint(source, tmp_path / "upstream.pth")
    for path in (tmp_path / "plain.pt", tmp_path / "upstream.pth"):
        module = _tiny_module(num_classes=10, ema_decay=0.99)
        fresh_head = module.net.head.fc.weight.detach().clone()
        message = module.load_initial_weights(str(path))
        assert "new 10-class head" in message and "527" in message
        state, ref = module.net.state_dict(), source.state_dict()
        for key in ref:
            if key.startswith("head.fc."):
                continue
            torch.testing.assert_close(state[key], ref[key], msg=key)
        torch.testing.assert_close(module.net.head.fc.weight, fresh_head)
        torch.testing.assert_close(module.ema_net.state_dict()["stem.0.weight"], ref["stem.0.weight"])
    same = _tiny_module(num_classes=527)
    assert same.load_initial_weights(str(tmp_path / "plain.pt")) == f"initialised from {tmp_path / 'plain.pt'}"
    torch.testing.assert_close(same.net.head.fc.weight, source.head.fc.weight)


def test_frozen_positions_are_not_trained():
    module = _tiny_module(freeze_positions=True)
    positions = [p for n, p in module.net.named_parameters() if n.endswith((".P", ".SIG"))]
    assert positions and not any(p.requires_grad for p in positions)
    names = {g["name"] for g in param_groups(module.net, 0.05, 5.0)}
    assert names == {"decay", "no_decay"}


# ----------------------------------------------------------------------------- non-finite guard
def test_guard_decides_on_the_device_and_is_read_a_step_later():
    from dcls_audio.training.step_guard import NonFiniteGuard

    guard = NonFiniteGuard(lag=1)
    flags, seen = [], []
    for step, loss in enumerate([0.5, float("nan"), 0.4, 0.3]):
        known = guard.poll()  # the state the previous step published
        seen.append(None if known is None else known.step)
        flags.append(float(guard.update(torch.tensor(loss), step)))
        guard.publish()
    assert seen == [None, None, 1, 1]  # step 1's bad loss is known to the host at step 2
    assert flags == [0.0, 1.0, 1.0, 1.0]  # sticky: no update from the first bad step on
    known = guard.poll()
    assert (known.step, known.here) == (1, True) and math.isnan(known.loss)
    other = NonFiniteGuard(lag=0, reduce=torch.ones_like)  # another rank's loss was bad
    other.update(torch.tensor(0.1), 7)
    known = other.poll()
    assert (known.step, known.here, known.loss) == (7, False, pytest.approx(0.1))


class _NanLossModule(AudioTaggingModule):
    """The loss of optimizer step ``bad_step`` is NaN (as if the batch overflowed)."""

    bad_step = 2

    def _train_forward(self, *args):
        loss = super()._train_forward(*args)
        return loss * float("nan") if self.global_step == self.bad_step else loss


class _Weights(L.Callback):
    def __init__(self) -> None:
        self.before: dict[int, list[torch.Tensor]] = {}
        self.after: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = [p.detach().clone() for p in pl_module.net.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step - 1] = [p.detach().clone() for p in pl_module.net.parameters()]


def test_a_fused_optimizer_skips_the_bad_step_on_device_and_the_run_stops_lag_steps_later():
    from torch.utils.data import DataLoader

    from dcls_audio.training.module import GUARD_LAG, NonFiniteLossError

    torch.manual_seed(0)
    module = _NanLossModule(
        "convnext_dcls_audio_tiny",
        5,
        model_kwargs=dict(TINY),
        lr=1e-2,
        fused_optimizer=True,
        front_end_augment=False,
        mixup_alpha=0.0,
    )
    module.front_end.clip_samples = 64000
    data = [{"waveform": (torch.randn(64000) * 3000).to(torch.int16), "target": torch.eye(5)[i % 5]} for i in range(16)]
    weights = _Weights()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=GUARD_LAG + 6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[weights],
    )
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 2"):
        trainer.fit(module, DataLoader(data, batch_size=2))
    opt = trainer.optimizers[0]
    assert GUARD_LAG >= 2
    stop = 2 + GUARD_LAG  # the step at which the host read step 2's state
    assert opt.defaults["fused"] and max(weights.before) == stop and stop not in weights.after
    assert any(not torch.equal(a, b) for a, b in zip(weights.before[1], weights.after[1]))  # good steps train
    for step in range(2, stop):  # neither the bad step nor the good-loss steps after it changed a weight
        assert all(torch.equal(a, b) for a, b in zip(weights.before[step], weights.after[step])), step
    assert all(torch.isfinite(p).all() for p in module.net.parameters())
    assert {float(s["step"]) for s in opt.state.values()} == {2.0}  # steps 0 and 1 only


def test_the_training_forward_compiles_as_one_graph():
    """Front end with augmentations, mixup, backbone and loss trace without a graph break."""
    torch.manual_seed(0)
    module = AudioTaggingModule("convnext_audio_tiny", 5, model_kwargs=dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)))
    module.front_end.clip_samples = 64000
    module.front_end.set_seed(0)
    wave = (torch.randn(2, 64000) * 3000).to(torch.int16)
    target = torch.eye(5)[:2]
    draws = module.front_end.sample_augmentations(2)
    from dcls_audio.features.augment import sample_mixup_draws

    mix = sample_mixup_draws(2, 0.8, torch.Generator().manual_seed(1))
    module.train()
    eager = module._train_forward(wave, target, draws, mix)
    torch._dynamo.reset()
    compiled = torch.compile(module._train_forward, fullgraph=True, backend="aot_eager")(wave, target, draws, mix)
    torch.testing.assert_close(compiled, eager)
    compiled.backward()


@pytest.mark.cuda
def test_adamw_is_fused_on_cuda_and_lamb_is_not():
    net = _tiny_net().cuda()
    assert build_optimizer(net, "adamw", 1e-3, 0.05, 5.0, fused=True).defaults["fused"]
    assert type(build_optimizer(net, "lamb", 1e-3, 0.05, 5.0, fused=True)).__name__ == "Lamb"
