"""Weights as .safetensors: written with the shared DCLS positions once, read back tied."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dcls_audio.cli import main
from dcls_audio.inference.loader import load_tagging_model
from dcls_audio.models import CheckpointError, create_model, load_checkpoint, tied_state_keys
from dcls_audio.models.safetensors_io import read_safetensors, save_safetensors

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(depths=(2, 2, 1, 1), dims=(16, 32, 64, 128), kernel_count=4, dilated_kernel_size=5, num_classes=6)
LABELS = [f"sound {i}" for i in range(6)]


def randomized_model() -> torch.nn.Module:
    model = create_model("convnext_dcls_audio_tiny", **TINY).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for value in model.state_dict(keep_vars=True).values():  # a tied tensor is drawn once per key: still tied
            if value.is_floating_point():
                value.copy_(0.5 * torch.randn(value.shape, generator=generator))
    return model


def logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 1, 128, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


def test_plain_save_file_refuses_the_shared_positions():
    """Why the module exists: safetensors' own writer rejects tensors that share memory."""
    with pytest.raises(RuntimeError, match="share memory|shared"):
        save_file(randomized_model().state_dict(), "/dev/null")


def test_round_trip_gives_equal_outputs_and_keeps_positions_shared(tmp_path):
    model = randomized_model()
    groups = tied_state_keys(model)
    assert groups and all(k.endswith((".P", ".SIG")) for g in groups for k in g)
    path, dropped = save_safetensors(model, tmp_path / "m.safetensors", LABELS)
    assert dropped == sum(len(g) - 1 for g in groups)
    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
    assert len(stored) == len(model.state_dict()) - dropped  # each shared tensor once

    loaded = load_checkpoint(None, path)
    assert loaded.model_name == "convnext_dcls_audio_tiny" and loaded.num_classes == 6
    assert torch.equal(logits(loaded), logits(model))
    assert tied_state_keys(loaded) == groups
    params = dict(loaded.named_parameters(remove_duplicate=False))
    for group in groups:  # one Parameter object under every key of a stage, as before saving
        assert all(params[k] is params[group[0]] for k in group)

    raw = read_safetensors(path)["state_dict"]
    for group in groups:  # the reader re-ties the dropped keys to the stored tensor
        assert all(raw[f"net.{k}"] is raw[f"net.{group[0]}"] for k in group)


def test_loads_wherever_a_checkpoint_is_accepted(tmp_path, monkeypatch):
    model = randomized_model()
    path, _ = save_safetensors(model, tmp_path / "m.safetensors", LABELS)
    tagging = load_tagging_model(path)  # infer and export
    assert tagging.labels == LABELS and tagging.labels_source == "checkpoint"
    assert torch.equal(logits(tagging.model), logits(model))
    fresh = create_model("convnext_dcls_audio_tiny", **TINY)  # fine-tuning loads into a built model
    assert torch.equal(logits(load_checkpoint(fresh, path)), logits(model))
    monkeypatch.chdir(tmp_path)  # a bare name finds checkpoints/<name>.safetensors
    (tmp_path / "checkpoints").mkdir()
    path.rename(tmp_path / "checkpoints" / "mine.safetensors")
    assert torch.equal(logits(load_checkpoint(None, "mine")), logits(model))


def test_export_cli_writes_safetensors_that_export_reads_again(tmp_path, capsys):
    model = randomized_model()
    ckpt = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {
                "model_name": "convnext_dcls_audio_tiny",
                "num_classes": 6,
                "model_kwargs": model.model_kwargs,
                "class_names": LABELS,
            },
        },
        ckpt,
    )
    out = tmp_path / "model.safetensors"
    assert main(["export", "-c", str(ckpt), "-f", "safetensors", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert torch.equal(logits(load_checkpoint(None, out)), logits(model))
    before = out.read_bytes()
    assert main(["export", "-c", str(out), "-f", "safetensors", "-o", str(out), "--overwrite"]) == 2
    assert "is also an input" in capsys.readouterr().err and out.read_bytes() == before  # never over the input
    script = tmp_path / "model.pt"
    assert main(["export", "-c", str(out), "-f", "torchscript", "-o", str(script), "--no-frontend"]) == 0
    assert "ok" in capsys.readouterr().out


def test_damaged_file_is_a_checkpoint_error(tmp_path):
    path, _ = save_safetensors(randomized_model(), tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{cut}: corrupt checkpoint"):
        load_checkpoint(None, cut)
