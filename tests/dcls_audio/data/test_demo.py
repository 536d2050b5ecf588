"""Built-in demo data: layout, true AudioSet labels, determinism, reuse and regeneration."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from dcls_audio.data import AudioSetHDF5, demo, ensure_demo_data, load_class_names

SHORT = 32000  # 1 s clips keep the test fast; the generator is the same at 10 s


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    return ensure_demo_data(tmp_path_factory.mktemp("demo"), clip_samples=SHORT)


def test_layout_and_labels(demo_files):
    by_name = {c.display_name: c.index for c in load_class_names()}
    demo_columns = sorted(by_name[n] for n in demo.DEMO_CLASS_NAMES)
    silence = by_name["Silence"]
    for path, rows in zip(demo_files, (480, 160)):
        ds = AudioSetHDF5(path, clip_samples=SHORT)
        assert len(ds) == rows and ds.num_dropped == 0 and ds.num_classes == 527
        targets = ds.targets()
        used = np.flatnonzero(targets.any(0)).tolist()
        assert used == demo_columns  # every demo class present, nothing else
        per_clip = targets.sum(1)
        assert per_clip.min() == 1 and (per_clip >= 2).sum() > rows // 3  # single- and multi-label clips
        assert (per_clip[targets[:, silence]] == 1).all()  # silence is never mixed
        assert targets.sum(0)[demo_columns].min() >= 8


def test_silence_is_quiet_and_events_are_not():
    clips = [clip for _, clip in zip(range(len(demo.DEMO_CLASS_NAMES)), demo.iter_demo_clips("train"))]
    levels = {}
    for (name, wave, _labels), cls in zip(clips, demo.DEMO_CLASS_NAMES):
        assert wave.dtype == np.int16 and wave.shape == (320000,) and name.startswith("demo_train_")
        levels[cls] = 20 * np.log10(np.sqrt(np.mean((wave / 2**15) ** 2)))
    assert levels["Silence"] < -45
    assert all(level > levels["Silence"] + 10 for cls, level in levels.items() if cls != "Silence")


def test_deterministic_and_reused(demo_files, tmp_path):
    again = ensure_demo_data(tmp_path, clip_samples=SHORT)
    for a, b in zip(demo_files, again):
        with h5py.File(a) as fa, h5py.File(b) as fb:
            for key in ("audio_name", "waveform", "target"):
                assert np.array_equal(fa[key][()], fb[key][()])
    stamps = [p.stat().st_mtime_ns for p in again]
    assert ensure_demo_data(tmp_path, clip_samples=SHORT) == again
    assert [p.stat().st_mtime_ns for p in again] == stamps  # reused, not rewritten


def test_regenerated_when_the_generator_version_changes(tmp_path, monkeypatch):
    train, _ = ensure_demo_data(tmp_path, clip_samples=SHORT)
    monkeypatch.setattr(demo, "DEMO_VERSION", demo.DEMO_VERSION + 1)
    train2, _ = ensure_demo_data(tmp_path, clip_samples=SHORT)
    with h5py.File(train2) as h5:
        assert f'"version": {demo.DEMO_VERSION}' in h5.attrs["demo_settings"]
    assert not list(tmp_path.glob("*.tmp"))


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DCLS_AUDIO_DATA", str(tmp_path))
    assert demo.default_demo_root() == tmp_path / "demo"
    monkeypatch.delenv("DCLS_AUDIO_DATA")
    assert demo.default_demo_root().parts[-2:] == ("data", "demo")
