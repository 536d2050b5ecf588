"""Checkpoint readers fed files that are not checkpoints, damaged ones and a seeded fuzz of
random and mutated files: only :class:`CheckpointError` may come out, with "not a checkpoint"
or "corrupt checkpoint", and ``--allow-pickle`` is advised only for a well-formed pickle that
asks for objects outside the allow-list. Weights with NaN/inf are refused, naming the key."""

from __future__ import annotations

import argparse
import random
import struct
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dcls_audio.models import (
    CheckpointError,
    UnsafeCheckpointError,
    create_model,
    extract_state_dict,
    load_checkpoint,
    to_upstream_state_dict,
)
from dcls_audio.models.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=4)


def _small_checkpoint(path: Path, legacy: bool = False) -> Path:
    g = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(3 + i, 5, generator=g) for i in range(4)}
    torch.save(
        {"model": state, "epoch": 2, "args": argparse.Namespace(model="convnext_audio_tiny")},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    return path


def _wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(16000)
        fh.writeframes(np.zeros(800, np.int16).tobytes())
    return path


def _assert_clean_refusal(path: Path, pattern: str) -> str:
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert not isinstance(info.value, UnsafeCheckpointError), message
    assert message.startswith(f"{path}: ") and pattern in message, message
    assert "allow-pickle" not in message and "allow_pickle" not in message, message
    return message


def test_files_that_are_no_checkpoint(tmp_path):
    assert "a WAV file" in _assert_clean_refusal(_wav(tmp_path / "clip.wav"), "not a checkpoint")
    text = tmp_path / "notes.pth"
    text.write_text("model: convnext\nlr: 0.1\n")
    assert "a text file" in _assert_clean_refusal(text, "not a checkpoint")
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(random.Random(1).randbytes(3000).replace(b"\x80", b"\x81").replace(b"PK", b"QK"))
    _assert_clean_refusal(noise, "not a checkpoint")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _assert_clean_refusal(empty, "not a checkpoint")
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    _assert_clean_refusal(other_zip, "not a checkpoint (a zip archive without data.pkl)")


def test_damaged_checkpoints(tmp_path):
    good = _small_checkpoint(tmp_path / "good.pth")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    _assert_clean_refusal(truncated, "corrupt checkpoint")

    # one flipped bit inside a tensor's bytes: torch's reader alone would load wrong weights
    with zipfile.ZipFile(good) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    with open(good, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
    start = info.header_offset + 30 + name_len + extra_len
    flipped = bytearray(data)
    flipped[start + 5] ^= 0x10
    bad_crc = tmp_path / "bad_crc.pth"
    bad_crc.write_bytes(bytes(flipped))
    assert "CRC" in _assert_clean_refusal(bad_crc, "corrupt checkpoint")

    legacy = _small_checkpoint(tmp_path / "legacy.pth", legacy=True).read_bytes()
    cut = tmp_path / "legacy_cut.pth"
    cut.write_bytes(legacy[:40])
    _assert_clean_refusal(cut, "corrupt checkpoint")


def test_malicious_pickle_is_still_refused_as_unsafe(tmp_path):
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": RunsCode()}, path)
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        read_checkpoint(path)
    assert not marker.exists()


def _mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = []
    for i in range(count):
        kind = i % 4
        buf = bytearray(data)
        if kind == 0:  # flip a few bytes anywhere
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] ^= rng.randint(1, 255)
        elif kind == 1:  # cut short
            del buf[rng.randrange(1, len(buf)) :]
        elif kind == 2:  # insert bytes
            at = rng.randrange(len(buf))
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        else:  # overwrite a run in the first kilobyte (headers, pickle)
            at = rng.randrange(min(len(buf), 1024))
            buf[at : at + 8] = rng.randbytes(8)
        out.append(bytes(buf))
    return out


def test_fuzzed_files_raise_only_checkpoint_errors(tmp_path):
    rng = random.Random(1234)
    zipped = _small_checkpoint(tmp_path / "base.pth").read_bytes()
    legacy = _small_checkpoint(tmp_path / "base_legacy.pth", legacy=True).read_bytes()
    samples: list[tuple[str, bytes]] = []
    for i in range(50):  # random bytes, some with the magic a reader dispatches on
        prefix = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x02\x8a\n"][i % 4]
        samples.append(("random", prefix + rng.randbytes(rng.randint(0, 2048))))
    samples += [("zip", m) for m in _mutations(zipped, rng, 100)]
    samples += [("legacy", m) for m in _mutations(legacy, rng, 50)]
    outcomes = {"loaded": 0, "refused": 0}
    for i, (kind, data) in enumerate(samples):
        path = tmp_path / f"fuzz{i:03d}.pth"
        path.write_bytes(data)
        try:
            obj = read_checkpoint(path)
            extract_state_dict(obj, source=str(path))
            outcomes["loaded"] += 1
        except CheckpointError as err:
            outcomes["refused"] += 1
            message = str(err)
            assert message.startswith(f"{path}: "), message
            if kind == "random" and not data.startswith(b"\x80"):
                assert "not a checkpoint" in message or "corrupt checkpoint" in message, message
                assert "allow" not in message, message
        path.unlink()
    assert len(samples) == 200 and outcomes["refused"] > 150, outcomes


def test_non_finite_weights_are_refused_naming_the_key(tmp_path):
    model = create_model("convnext_audio_tiny", **TINY)
    for bad in (float("nan"), float("inf")):
        state = to_upstream_state_dict(model)
        key = "stages.1.0.pwconv1.weight"
        state[key] = state[key].clone()
        state[key][0, 1] = bad
        path = tmp_path / "nan.pth"
        torch.save({"model": state}, path)
        with pytest.raises(CheckpointError, match=rf"nan\.pth: corrupt weights: '{key}' holds 1 NaN/inf"):
            load_checkpoint(create_model("convnext_audio_tiny", **TINY), path)
