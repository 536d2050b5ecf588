"""The front end's fused passes (:mod:`dcls_audio.features.logmel_passes`): their torch twins give
the op-by-op chain's log-mel (training draws included), the dispatcher's environment switch, and on
CUDA the Triton programs against the op-by-op chain on the same device and on the CPU. The programs
themselves are checked on the CPU in ``interpreter/test_logmel_programs.py``."""

from __future__ import annotations

import pytest
import torch

from dcls_audio.features import LogMelFrontEnd
from dcls_audio.features import logmel_passes as passes

from dcls_testing import record_programs

S = 64000


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(5, S, generator=g) * 3000
    wave[1] *= 1e-4  # near-silence: the amin floor
    return wave.round().clamp(-32768, 32767).to(torch.int16)


def _both(front: LogMelFrontEnd, x: torch.Tensor, draws, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "reference")
    want = front(x, draws)
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "fused")
    return front(x, draws), want


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("as_float", [False, True])
def test_passes_give_the_op_by_op_log_mel(clips, monkeypatch, train, as_float):
    front = LogMelFrontEnd(seed=3, clip_samples=S).train(train)
    x = clips.float() / 32768 if as_float else clips
    draws = front.sample_augmentations(len(clips))
    if train:  # every augmentation applied somewhere in the batch
        assert draws.speed.offset.ne(0).any() and draws.erase.apply.any()
    got, want = _both(front, x, draws, monkeypatch)
    assert got.shape == want.shape == (5, 1, 128, S // 320 + 1) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_a_short_clip_is_padded_as_in_the_chain(clips, monkeypatch):
    front = LogMelFrontEnd(augment=False, clip_samples=S).eval()
    got, want = _both(front, clips[:, : S - 1000], None, monkeypatch)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_environment_switch(clips, monkeypatch):
    cpu = clips[:1]
    monkeypatch.delenv(passes.FRONT_END_ENV_VAR, raising=False)
    assert passes.fused_front_end_enabled(cpu) is False  # the default on the CPU: the op-by-op chain
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "auto")
    assert passes.fused_front_end_enabled(cpu) is False
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "fused")
    assert passes.fused_front_end_enabled(cpu) is True
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert passes.fused_front_end_enabled(cpu) is False  # traced: the compiler fuses the chain
    monkeypatch.undo()
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "Reference")
    assert passes.fused_front_end_enabled(cpu) is False
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "fast")
    with pytest.raises(ValueError, match="DCLS_AUDIO_FRONT_END='fast'"):
        passes.fused_front_end_enabled(cpu)


class _CudaLike:
    """Stands for a CUDA waveform: the switch reads ``is_cuda`` only."""

    is_cuda = True


@pytest.mark.parametrize("triton", [False, True])
def test_default_runs_the_passes_on_cuda_with_triton(monkeypatch, triton):
    monkeypatch.setattr(passes, "triton_available", lambda: triton)
    cuda = _CudaLike()
    for unset_or_auto in (None, "auto", " AUTO "):
        if unset_or_auto is None:
            monkeypatch.delenv(passes.FRONT_END_ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(passes.FRONT_END_ENV_VAR, unset_or_auto)
        assert passes.fused_front_end_enabled(cuda) is triton
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "reference")
    assert passes.fused_front_end_enabled(cuda) is False
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "fused")
    assert passes.fused_front_end_enabled(cuda) is True
    monkeypatch.delenv(passes.FRONT_END_ENV_VAR)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert passes.fused_front_end_enabled(cuda) is False


def test_settings_the_passes_do_not_implement_keep_the_chain(clips, monkeypatch):
    front = LogMelFrontEnd(augment=False, clip_samples=S).eval()
    front.to_db.top_db = 80.0
    assert not front._fusable()
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "fused")
    calls = []
    monkeypatch.setattr(front, "_fused", lambda *a: calls.append(a))
    front(clips)
    assert calls == []


def test_pass_inputs_are_checked():
    with pytest.raises(ValueError, match="batch, samples"):
        passes.windowed_frames(torch.zeros(10), torch.hann_window(8), 4)
    with pytest.raises(ValueError, match="too few"):
        passes.windowed_frames(torch.zeros(1, 4), torch.hann_window(16), 4)
    with pytest.raises(ValueError, match="complex64"):
        passes.power_erased(torch.zeros(1, 2, 3))


@pytest.mark.cuda
@pytest.mark.parametrize("train", [False, True])
def test_cuda_programs_give_the_op_by_op_log_mel(clips, monkeypatch, train):
    """With ``fused`` the passes launch their programs on CUDA; they equal the chain on the GPU
    and on the CPU."""
    front = LogMelFrontEnd(seed=3, clip_samples=S).train(train)
    draws = front.sample_augmentations(len(clips))
    gpu = front.cuda()
    x = clips.cuda()
    launched = record_programs(monkeypatch, passes)
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "fused")
    moved = draws.to("cuda") if draws is not None else None
    got = gpu(x, moved)
    assert launched == {"windowed_frames", "power_erased", "db_normalised"}
    monkeypatch.delenv(passes.FRONT_END_ENV_VAR)  # the default on CUDA: the passes again
    launched.clear()
    torch.testing.assert_close(gpu(x, moved), got, rtol=0, atol=0)
    assert launched == {"windowed_frames", "power_erased", "db_normalised"}
    monkeypatch.setenv(passes.FRONT_END_ENV_VAR, "reference")
    torch.testing.assert_close(got, gpu(x, moved), rtol=0, atol=1e-4)
    cpu = front.cpu()(clips, draws)
    torch.testing.assert_close(got.cpu(), cpu, rtol=0, atol=1e-3)
