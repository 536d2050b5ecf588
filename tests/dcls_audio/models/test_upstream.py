"""The six backbones reproduce the upstream DCLS-Audio logits from upstream-layout weights.

Reference: ../shared/upstream (manifests of every upstream key/shape/tie, the deterministic
fill, and the logits the upstream implementation produced for input.pt).
"""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

from dcls_audio.models import (
    UPSTREAM_PARAM_COUNTS,
    count_parameters,
    create_model,
    fold_dcls,
    layout_of,
    list_models,
    load_checkpoint,
    load_state_dict_checked,
    reparameterize_fastvit,
    save_upstream_checkpoint,
    tied_state_keys,
)

MODELS = [
    "convnext_audio_tiny",
    "convnext_dcls_audio_tiny",
    "fastvit_audio_sa24",
    "fastvit_dcls_audio_sa24",
    "convformer_audio_s18",
    "convformer_dcls_audio_s18",
]
ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def ref(upstream_dir):
    import reference_fill

    x = reference_fill.reference_input()[:2].float()
    return reference_fill, x


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _upstream_pth(path, name, state_dict) -> None:
    """A file laid out like a released DCLS-Audio checkpoint."""
    torch.save(
        {
            "model": state_dict,
            "optimizer": {"state": {}, "param_groups": [{"lr": 4e-3, "weight_decay": 0.05, "params": [0, 1]}]},
            "epoch": 59,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
            "args": argparse.Namespace(model=name, nb_classes=527, drop_path=0.4, lr=4e-3, input_size=[128, 1001]),
        },
        path,
    )


def test_registry_lists_the_six_upstream_names():
    assert list_models() == MODELS
    assert list_models("*dcls*") == [n for n in MODELS if "dcls" in n]


@pytest.mark.parametrize("name", MODELS)
def test_upstream_weights_reproduce_upstream_logits(name, ref, tmp_path, monkeypatch):
    reference_fill, x = ref
    manifest = reference_fill.load_manifest(name)
    expected = reference_fill.expected_logits(name)[: x.shape[0]]

    # 1. upstream keys loaded straight into create_model(name)
    state = reference_fill.synthetic_state_dict(manifest)
    model = load_state_dict_checked(create_model(name), state)
    assert model.num_classes == 527
    logits = _logits(model, x)
    assert logits.shape == (x.shape[0], 527)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)

    # same parameter count as upstream (shared P/SIG counted once), same keys and ties
    assert count_parameters(model) == manifest["num_parameters"] == UPSTREAM_PARAM_COUNTS[name]
    assert len(model.state_dict()) == len(manifest["state_dict"])
    expected_groups: dict[str, set[str]] = {}
    for entry in manifest["state_dict"]:
        if entry["tied_to"]:
            expected_groups.setdefault(entry["tied_to"], {entry["tied_to"]}).add(entry["key"])
    to_upstream = layout_of(model).names
    ties = {frozenset(to_upstream[k] for k in group) for group in tied_state_keys(model)}
    assert ties == {frozenset(g) for g in expected_groups.values()}

    # 2. a released-style .pth (args Namespace, optimizer, epoch, scaler), name taken from args
    pth = tmp_path / f"{name}.pth"
    _upstream_pth(pth, name, state)
    from_file = load_checkpoint(None, pth)
    assert from_file.model_name == name
    torch.testing.assert_close(_logits(from_file, x), expected, atol=ATOL, rtol=0)

    # 3. create_model(checkpoint_path=<bare model name>) finds <checkpoints>/<name>.pth
    monkeypatch.setenv("DCLS_AUDIO_CHECKPOINTS", str(tmp_path))
    by_name = create_model(name, checkpoint_path=name)
    _assert_same_state(from_file, by_name)
    _assert_same_state(model, by_name)

    # 4. saving back to the upstream layout round-trips: same keys, values, ties as shared storage
    out = save_upstream_checkpoint(by_name, tmp_path / "saved" / f"{name}.pth", epoch=1)
    saved = torch.load(out, weights_only=False)
    assert set(saved["model"]) == {e["key"] for e in manifest["state_dict"]}
    for entry in manifest["state_dict"]:
        tensor = saved["model"][entry["key"]]
        assert tuple(tensor.shape) == tuple(entry["shape"]), entry["key"]
        assert torch.equal(tensor, state[entry["key"]]), entry["key"]
        if entry["tied_to"]:
            assert tensor.data_ptr() == saved["model"][entry["tied_to"]].data_ptr(), entry["key"]
    assert saved["args"].model == name and saved["args"].nb_classes == 527 and saved["epoch"] == 1
    del saved, from_file, by_name

    if name.startswith("fastvit"):
        _check_reparameterize(model, x, expected)


def _check_reparameterize(model: torch.nn.Module, x: torch.Tensor, expected: torch.Tensor) -> None:
    """FastViT: timm's reparameterize() inference folding keeps the logits."""
    folded = reparameterize_fastvit(copy.deepcopy(model).eval())
    assert not any(
        getattr(m, "reparam_conv", "absent") is None
        for m in folded.modules()
        if type(m).__name__ in ("MobileOneBlock", "RepMixer", "ReparamLargeKernelConv")
    )
    assert count_parameters(folded) < count_parameters(model)
    torch.testing.assert_close(_logits(folded, x), expected, atol=ATOL, rtol=0)
    if model.model_name == "fastvit_dcls_audio_sa24":
        # DCLS layers folded to dense 23x23 kernels first: the RepCPE identity folds too
        dense = reparameterize_fastvit(fold_dcls(copy.deepcopy(model).eval()))
        assert tuple(dense.stages[3].pos_emb.reparam_conv.kernel_size) == (23, 23)
        torch.testing.assert_close(_logits(dense, x), expected, atol=ATOL, rtol=0)
