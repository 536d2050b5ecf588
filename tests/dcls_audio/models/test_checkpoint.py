"""Checkpoint files: upstream .pth, Lightning .ckpt, plain state_dicts; errors; safe loading."""

from __future__ import annotations

import argparse

import pytest
import torch

from dcls_audio.models import (
    RELEASED_CHECKPOINTS,
    CheckpointError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    build_loaded_model,
    create_model,
    extract_state_dict,
    infer_model_name,
    list_models,
    load_checkpoint,
    save_upstream_checkpoint,
    to_upstream_state_dict,
)

TINY = {
    "convnext": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)),
    "fastvit": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)),
    "convformer": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)),
}
TINY_DCLS = dict(kernel_count=4, dilated_kernel_size=5)


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(name: str, **overrides) -> torch.nn.Module:
    kwargs = dict(TINY[name.split("_")[0]], num_classes=10)
    if "_dcls_" in name:
        kwargs.update(TINY_DCLS)
    return create_model(name, **{**kwargs, **overrides})


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Distinct values everywhere (BN stats included) so a wrong mapping cannot go unseen."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for value in model.state_dict(keep_vars=True).values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=generator))
    return model


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def upstream_pth(path, model, **extra) -> None:
    torch.save({"model": to_upstream_state_dict(model), "epoch": 3, **extra}, path)


# ----------------------------------------------------------------------------- formats
def test_plain_state_dicts_in_both_namings_and_with_a_ddp_prefix(tmp_path):
    source = randomize(tiny("convformer_dcls_audio_s18"))
    variants = {
        "ours.pt": source.state_dict(),
        "upstream.pt": to_upstream_state_dict(source),
        "ddp.pt": {f"module.{k}": v for k, v in source.state_dict().items()},
    }
    for filename, state in variants.items():
        torch.save(state, tmp_path / filename)
        loaded = load_checkpoint(tiny("convformer_dcls_audio_s18"), tmp_path / filename)
        assert_same_state(source, loaded)
    # upstream keeps Linear weights 2-D where we use 1x1 convs
    assert variants["upstream.pt"]["stages.0.0.token_mixer.pwconv1.weight"].ndim == 2


def test_lightning_checkpoint_backbone_and_ema(tmp_path):
    L = pytest.importorskip("lightning")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from torch.utils.data import DataLoader, TensorDataset

    kwargs = dict(TINY["convnext"], num_classes=10, **TINY_DCLS)

    class Tagger(L.LightningModule):
        def __init__(self, model_name: str, model_kwargs: dict) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = create_model(model_name, **model_kwargs)
            self.ema_net = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.binary_cross_entropy_with_logits(self.net(x), y)

        def on_train_batch_end(self, *args) -> None:
            self.ema_net.update_parameters(self.net)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.net.parameters(), lr=1e-2)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)}

    data = TensorDataset(torch.randn(4, 1, 128, 160), torch.rand(4, 10))
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    module = Tagger("convnext_dcls_audio_tiny", kwargs)
    trainer.fit(module, DataLoader(data, batch_size=2))
    path = tmp_path / "tagger.ckpt"
    trainer.save_checkpoint(path)

    net = load_checkpoint(None, path)  # name and sizes from hyper_parameters, weights_only
    assert net.model_name == "convnext_dcls_audio_tiny" and net.num_classes == 10
    assert_same_state(module.net, net)
    ema = load_checkpoint(None, path, use_ema=True)
    assert_same_state(module.ema_net.module, ema)
    assert not torch.equal(ema.head.fc.weight, net.head.fc.weight)
    by_kwargs = create_model("convnext_dcls_audio_tiny", checkpoint_path=path, use_ema=True, **kwargs)
    assert_same_state(module.ema_net.module, by_kwargs)


def test_upstream_file_with_ema_optimizer_and_args_round_trips(tmp_path):
    model = randomize(tiny("fastvit_dcls_audio_sa24"))
    ema = randomize(tiny("fastvit_dcls_audio_sa24", drop_path_rate=0.1))
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    args = argparse.Namespace(lr=4e-3, drop_path=0.4)
    optimizer = torch.optim.AdamW(model.parameters()).state_dict()
    path = save_upstream_checkpoint(
        model,
        tmp_path / "run" / "ckpt.pth",
        model_ema=ema,
        optimizer=optimizer,
        epoch=7,
        scaler={"scale": 1024.0},
        args=args,
    )
    assert vars(args) == {"lr": 4e-3, "drop_path": 0.4}  # caller's namespace untouched
    raw = torch.load(path, weights_only=False)
    assert set(raw) == {"model", "model_ema", "optimizer", "epoch", "scaler", "args"}
    assert raw["args"].model == "fastvit_dcls_audio_sa24" and raw["args"].nb_classes == 10
    assert "network.6.pe.P" in raw["model"] and "stages.3.pos_emb.pos_enc.P" not in raw["model"]
    kwargs = dict(TINY["fastvit"], **TINY_DCLS, num_classes=10)
    assert_same_state(model, load_checkpoint("fastvit_dcls_audio_sa24", path, **kwargs))
    assert_same_state(ema, load_checkpoint("fastvit_dcls_audio_sa24", path, use_ema=True, **kwargs))


def test_use_ema_without_ema_weights_is_an_error(tmp_path):
    model = tiny("convnext_audio_tiny")
    upstream_pth(tmp_path / "a.pth", model)
    torch.save(model.state_dict(), tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"a\.pth: no EMA weights \('model_ema'\)"):
        load_checkpoint(model, tmp_path / "a.pth", use_ema=True)
    with pytest.raises(CheckpointError, match=r"b\.pt: a plain state_dict holds no separate EMA"):
        load_checkpoint(model, tmp_path / "b.pt", use_ema=True)


# ----------------------------------------------------------------------------- key errors
def test_missing_and_unexpected_keys_are_listed(tmp_path):
    model = randomize(tiny("convnext_dcls_audio_tiny"))
    state = to_upstream_state_dict(model)
    del state["stages.2.0.pwconv2.bias"]
    state["stages.2.0.extra.weight"] = torch.zeros(3)
    state["head.weight"] = torch.zeros(5, 128)
    upstream_pth(tmp_path / "broken.pth", model)
    torch.save({"model": state}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(tiny("convnext_dcls_audio_tiny"), tmp_path / "broken.pth")
    err = info.value
    assert err.missing == ["stages.2.0.pwconv2.bias"]
    assert err.unexpected == ["stages.2.0.extra.weight"]
    assert err.mismatched == [("head.weight", (5, 128), (10, 128))]
    message = str(err)
    assert "broken.pth" in message and "missing keys (1): stages.2.0.pwconv2.bias" in message
    assert "unexpected keys (1): stages.2.0.extra.weight" in message
    assert "size mismatch for head.weight: checkpoint (5, 128), model (10, 128)" in message


@pytest.mark.parametrize(
    "saved, target",
    [
        ("convnext_audio_tiny", "convnext_dcls_audio_tiny"),
        ("convnext_dcls_audio_tiny", "convnext_audio_tiny"),
        ("fastvit_dcls_audio_sa24", "convformer_dcls_audio_s18"),
        ("convformer_audio_s18", "fastvit_audio_sa24"),
        ("fastvit_audio_sa24", "fastvit_dcls_audio_sa24"),
        ("convformer_dcls_audio_s18", "convnext_dcls_audio_tiny"),
    ],
)
def test_a_checkpoint_of_another_model_is_named(saved, target, upstream_dir, tmp_path):
    import reference_fill

    manifest = reference_fill.load_manifest(saved)
    state = {e["key"]: torch.zeros(e["shape"], dtype=getattr(torch, e["dtype"])) for e in manifest["state_dict"]}
    path = tmp_path / f"{saved}.pth"
    torch.save({"model": state, "args": argparse.Namespace(model=saved)}, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(target, path)
    assert info.value.suggested_model == saved
    assert f"does not fit {target}" in str(info.value)
    assert f"The keys are those of a {saved} checkpoint" in str(info.value)
    assert info.value.missing or info.value.unexpected


def test_same_model_other_configuration_is_explained(tmp_path):
    path = tmp_path / "tiny.pth"
    upstream_pth(path, tiny("convnext_audio_tiny"))
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        load_checkpoint("convnext_audio_tiny", path)  # full-size model, tiny weights


def test_tied_keys_holding_different_values_are_refused(tmp_path):
    model = randomize(tiny("convnext_dcls_audio_tiny", depths=(2, 1, 1, 1)))
    state = to_upstream_state_dict(model)
    state["stages.0.1.dwconv.P"] = state["stages.0.0.dwconv.P"] + 1.0
    torch.save({"model": state}, tmp_path / "untied.pth")
    with pytest.raises(CheckpointError, match="share_positions=False"):
        load_checkpoint(tiny("convnext_dcls_audio_tiny", depths=(2, 1, 1, 1)), tmp_path / "untied.pth")
    untied = load_checkpoint(
        tiny("convnext_dcls_audio_tiny", depths=(2, 1, 1, 1), share_positions=False), tmp_path / "untied.pth"
    )
    assert torch.equal(untied.stages[0].blocks[1].conv_dw.P, state["stages.0.1.dwconv.P"])


def test_infer_model_name_from_upstream_and_our_keys(upstream_dir):
    import reference_fill

    for name in list_models():
        manifest = reference_fill.load_manifest(name)
        assert infer_model_name({e["key"]: None for e in manifest["state_dict"]}) == name
        assert infer_model_name(tiny(name).state_dict()) == name
        assert infer_model_name({f"net.{k}": v for k, v in tiny(name).state_dict().items()}) == name
    assert infer_model_name({"encoder.layer.0.weight": torch.zeros(1)}) is None


# ----------------------------------------------------------------------------- files
def test_checkpoint_path_may_name_a_model_in_the_checkpoints_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DCLS_AUDIO_CHECKPOINTS", str(tmp_path))
    model = randomize(tiny("convformer_audio_s18"))
    upstream_pth(tmp_path / "convformer_audio_s18.pth", model, args=argparse.Namespace(model="convformer_audio_s18"))
    loaded = create_model(
        "convformer_audio_s18", checkpoint_path="convformer_audio_s18", **TINY["convformer"], num_classes=10
    )
    assert_same_state(model, loaded)
    # a released name found nowhere is downloaded (tests/dcls_audio/models/test_download.py); offline: one line
    url = "http://127.0.0.1:9/convformer_dcls_audio_s18.pth"  # the discard port: nothing answers HTTP there
    monkeypatch.setitem(RELEASED_CHECKPOINTS, "convformer_dcls_audio_s18", url)
    with pytest.raises(OSError, match=f"cannot download {url} .*put it at {tmp_path}/convformer_dcls_audio_s18.pth"):
        create_model("convformer_dcls_audio_s18", checkpoint_path="convformer_dcls_audio_s18")
    with pytest.raises(FileNotFoundError, match="No file was released for convnext_audio_tiny"):
        create_model("convnext_audio_tiny", checkpoint_path="convnext_audio_tiny")
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_checkpoint("convnext_audio_tiny", tmp_path / "nothere.pth")


class _RunsCode:
    """Unpickling this object calls open(marker, 'w'): arbitrary code from the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_weights_only_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "code-ran"
    model = tiny("convnext_audio_tiny")
    path = tmp_path / "evil.pth"
    torch.save({"model": to_upstream_state_dict(model), "args": _RunsCode(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth: refused to load.*allow_pickle=True"):
        load_checkpoint(model, path)
    with pytest.raises(UnsafeCheckpointError):
        create_model("convnext_audio_tiny", checkpoint_path=path)
    assert not marker.exists()
    # the documented escape hatch runs the full unpickler (and with it the embedded code)
    load_checkpoint(model, path, allow_pickle=True)
    assert marker.exists()


def test_unreadable_or_foreign_files_are_reported(tmp_path):
    model = tiny("convnext_audio_tiny")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(model, tmp_path / "junk.pth")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth: unrecognised checkpoint layout.*weights"):
        load_checkpoint(model, tmp_path / "other.pth")
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "unknown.pth")
    with pytest.raises(CheckpointError, match="cannot tell which model") as info:
        load_checkpoint(None, tmp_path / "unknown.pth")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'unknown.pth'}: ")
    assert "model name argument" in message and "--model" in message  # fits both callers
    assert message.endswith("one of: " + ", ".join(list_models()))


def test_build_loaded_model_returns_the_named_model():
    source = randomize(tiny("convnext_audio_tiny"))
    contents = extract_state_dict(source.state_dict(), source="plain.pt")  # no name saved: inferred
    model = build_loaded_model(contents, None, "plain.pt", **TINY["convnext"], num_classes=10)
    assert isinstance(model, torch.nn.Module) and model.model_name == "convnext_audio_tiny"
    assert_same_state(source, model)


# ----------------------------------------------------------------------------- create_model
def test_create_model_argument_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*convnext_audio_tiny"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="kernel_count only apply to the \\*_dcls_\\* models"):
        create_model("convnext_audio_tiny", kernel_count=8)
    with pytest.raises(ValueError, match="unknown argument\\(s\\) \\['width'\\]"):
        create_model("convformer_audio_s18", width=3)
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("fastvit_audio_sa24", dims=(16, 32, 64, 80))


def test_tiny_cpu_variant_runs():
    model = create_model(
        "convnext_dcls_audio_tiny", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), kernel_count=8, dilated_kernel_size=9
    ).eval()
    assert model.stages[0].blocks[0].conv_dw.dilated_kernel_size == (9, 9)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 128, 1001)).shape == (2, 527)
