"""AudioSetHDF5: concatenation, dropped rows, item layout, lazy per-process handles, layout errors."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dcls_audio.data import AudioSetHDF5, load_class_names
from dcls_audio.data.hdf5_dataset import write_hdf5

S = 320000


def make_file(path, names, num_classes=527, clip_samples=S, seed=0):
    rng = np.random.default_rng(seed)
    n = len(names)
    waves = rng.integers(-2000, 2000, size=(n, clip_samples), dtype=np.int16)
    for i, name in enumerate(names):
        if not name:
            waves[i] = 0  # failed downloads are stored as zeros
    targets = rng.random((n, num_classes)) < 0.05
    write_hdf5(path, names, waves, targets)
    return waves, targets


def test_concatenates_files_and_drops_empty_names(tmp_path, caplog):
    wa, ta = make_file(tmp_path / "a.h5", ["Yaaa", "", "Yccc"], seed=1)
    wb, tb = make_file(tmp_path / "b.h5", ["", "", "Yfff", "Yggg"], seed=2)
    with caplog.at_level(logging.INFO, logger="dcls_audio.data.hdf5_dataset"):
        ds = AudioSetHDF5([tmp_path / "a.h5", tmp_path / "b.h5"])
    assert len(ds) == 4 and ds.num_dropped == 3 and ds.dropped_per_file == [1, 2]
    assert "dropped 2 of 4 rows" in caplog.text and "b.h5" in caplog.text
    expected = [("Yaaa", wa[0], ta[0]), ("Yccc", wa[2], ta[2]), ("Yfff", wb[2], tb[2]), ("Yggg", wb[3], tb[3])]
    for i, (name, wave, target) in enumerate(expected):
        item = ds[i]
        assert item["audio_name"] == name
        assert item["waveform"].dtype == torch.int16 and item["waveform"].shape == (S,)
        assert np.array_equal(item["waveform"].numpy(), wave)
        assert item["target"].dtype == torch.float32 and np.array_equal(item["target"].numpy(), target)
        assert item["index"].dtype == torch.int64 and int(item["index"]) == i
    assert ds.num_classes == 527 and ds.class_names[0] == "Speech" and ds.class_mids[0] == "/m/09x0r"
    np.testing.assert_array_equal(ds.targets(), np.stack([t for _, _, t in expected]))
    with pytest.raises(IndexError):
        ds[4]


def test_dataloader_workers_and_batch_layout(tmp_path):
    make_file(tmp_path / "a.h5", [f"Y{i:03d}" for i in range(6)] + [""], num_classes=5, seed=3)
    ds = AudioSetHDF5(tmp_path / "a.h5")
    direct = [ds[i] for i in range(len(ds))]
    ds.close()
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert ds._handles is None  # the parent never opened the files: workers opened their own
    batch = batches[0]
    assert batch["waveform"].shape == (4, S) and batch["waveform"].dtype == torch.int16
    assert batch["target"].shape == (4, 5) and batch["target"].dtype == torch.float32
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["audio_name"] == ["Y000", "Y001", "Y002", "Y003"]
    waves = torch.cat([b["waveform"] for b in batches])
    assert torch.equal(waves, torch.stack([d["waveform"] for d in direct]))


def test_class_names_from_csv_or_generic(tmp_path):
    make_file(tmp_path / "a.h5", ["Y1", "Y2"], num_classes=3)
    ds = AudioSetHDF5(tmp_path / "a.h5")
    assert ds.class_names == ["class_000", "class_001", "class_002"]
    csv = tmp_path / "classes.csv"
    csv.write_text('index,mid,display_name\n0,/x/a,"Dog, barking"\n1,/x/b,Cat\n2,/x/c,Cow\n')
    ds = AudioSetHDF5(tmp_path / "a.h5", class_csv=csv)
    assert ds.class_names == ["Dog, barking", "Cat", "Cow"] and ds.class_mids == ["/x/a", "/x/b", "/x/c"]
    assert len(load_class_names()) == 527
    csv.write_text("index,mid,display_name\n0,/x/a,A\n1,/x/b,B\n")
    with pytest.raises(ValueError, match="lists 2 classes but .*a.h5: dataset 'target' has 3"):
        AudioSetHDF5(tmp_path / "a.h5", class_csv=csv)


def _rewrite(path, name, data):
    with h5py.File(path, "a") as h5:
        del h5[name]
        if data is not None:
            h5.create_dataset(name, data=data)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("waveform", None, "dataset 'waveform' is missing"),
        ("target", None, "dataset 'target' is missing"),
        ("audio_name", None, "dataset 'audio_name' is missing"),
        ("waveform", np.zeros((2, S), dtype=np.float32), "dataset 'waveform' must be int16"),
        ("waveform", np.zeros((2, 1000), dtype=np.int16), "dataset 'waveform' has clips of 1000 samples"),
        ("target", np.zeros((2, 527), dtype=np.float32), "dataset 'target' must be bool"),
        ("target", np.zeros((3, 527), dtype=bool), "dataset 'target' has 3 rows"),
        ("audio_name", np.array([1, 2]), "dataset 'audio_name' must be"),
    ],
)
def test_layout_errors_name_file_and_dataset(tmp_path, name, data, message):
    path = tmp_path / "bad.h5"
    make_file(path, ["Y1", "Y2"])
    _rewrite(path, name, data)
    with pytest.raises(ValueError, match=message) as info:
        AudioSetHDF5(path)
    assert str(path) in str(info.value)


def test_class_count_mismatch_between_files(tmp_path):
    make_file(tmp_path / "a.h5", ["Y1"], num_classes=527)
    make_file(tmp_path / "b.h5", ["Y2"], num_classes=10)
    with pytest.raises(ValueError, match=r"b\.h5: dataset 'target' has 10 classes but .*a\.h5 has 527"):
        AudioSetHDF5([tmp_path / "a.h5", tmp_path / "b.h5"])


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        AudioSetHDF5(missing)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="junk.h5: not a readable HDF5 file"):
        AudioSetHDF5(junk)
    with pytest.raises(ValueError, match="no HDF5 files"):
        AudioSetHDF5([])


def test_batch_read_equals_item_reads_in_sampler_order(tmp_path):
    """``__getitems__`` (one h5py read per file, rows sorted) returns the items in the order asked,
    repeats included, across files and dropped rows; a loader with workers hands it on unchanged."""
    from dcls_audio.data.hdf5_dataset import collate_clips

    make_file(tmp_path / "a.h5", ["Ya0", "", "Ya2", "Ya3"], num_classes=5, seed=4)
    make_file(tmp_path / "b.h5", ["Yb0", "Yb1", ""], num_classes=5, seed=5)
    ds = AudioSetHDF5([tmp_path / "a.h5", tmp_path / "b.h5"])
    order = [4, 0, 3, 2, 0, 1]
    got = ds.__getitems__(order)
    batch = collate_clips(got)
    for k, i in enumerate(order):
        item = ds[i]
        assert torch.equal(batch["waveform"][k], item["waveform"]) and torch.equal(batch["target"][k], item["target"])
        assert batch["audio_name"][k] == item["audio_name"] and int(batch["index"][k]) == i
    assert batch["waveform"].dtype == torch.int16 and batch["target"].dtype == torch.float32
    assert [d["audio_name"] for d in got] == batch["audio_name"]  # also a list of items: any collate works
    with pytest.raises(IndexError, match="index 5 out of range"):
        ds.__getitems__([0, 5])
    ds.close()
    sampler = torch.utils.data.SequentialSampler(order)
    loader = DataLoader(ds, batch_size=3, sampler=[order[i] for i in sampler], num_workers=1, collate_fn=collate_clips)
    waves = torch.cat([b["waveform"] for b in loader])
    assert torch.equal(waves, batch["waveform"])
