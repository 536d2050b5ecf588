"""Rows read with os.preadv equal what h5py reads; layouts it cannot read fall back to h5py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from dcls_audio.data import AudioSetHDF5
from dcls_audio.data.contiguous_rows import ContiguousRows
from dcls_audio.data.hdf5_dataset import collate_clips, create_layout, write_hdf5
from dcls_audio.errors import UsageError

S = 4000  # short clips keep the files small; the reader does not care about the length


def _write(path, rows=9, seed=0, **layout):
    rng = np.random.default_rng(seed)
    waves = rng.integers(-32768, 32767, size=(rows, S), dtype=np.int16, endpoint=True)
    targets = rng.random((rows, 5)) < 0.3
    if not layout:
        write_hdf5(path, [f"Y{i}" for i in range(rows)], waves, targets)
        return waves
    with h5py.File(path, "w") as h5:
        h5.create_dataset("audio_name", data=np.array([f"Y{i}".encode() for i in range(rows)], dtype="S20"))
        h5.create_dataset("waveform", data=waves, **layout)
        h5.create_dataset("target", data=targets)
    return waves


def test_rows_equal_h5py_in_any_order_with_repeats(tmp_path):
    waves = _write(tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        reader = ContiguousRows.of(tmp_path / "a.h5", h5["waveform"])
    assert reader is not None
    rows = np.array([8, 0, 3, 3, 7, 1])
    slots = np.array([5, 4, 3, 2, 1, 0])
    out = np.full((6, S), 99, dtype=np.int16)
    reader.read_into(out, slots, rows)
    assert np.array_equal(out, waves[rows[np.argsort(slots)]])
    with pytest.raises(IndexError, match="row 9 out of range"):
        reader.read_into(out, np.array([0]), np.array([9]))
    with pytest.raises(ValueError, match="C-contiguous int16"):
        reader.read_into(out[:, ::2], slots, rows)
    with pytest.raises(IndexError, match="slot 6 out of range for a batch of 6"):
        reader.read_into(out, np.array([6]), np.array([0]))
    with pytest.raises(ValueError, match="differ in length: 2 and 1"):
        reader.read_into(out, np.array([0, 1]), np.array([0]))
    reader.close()


def test_reduced_precision_integers_are_left_to_h5py(tmp_path):
    """A 12-bit integer type reads as int16 through h5py (which sign-extends it); its raw bytes are not
    those values, so the reader declines it and the dataset still matches h5py."""
    values = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    stored = h5py.h5t.STD_I16LE.copy()
    stored.set_precision(12)
    with h5py.File(tmp_path / "p.h5", "w") as h5:
        space = h5py.h5s.create_simple(values.shape)
        h5py.h5d.create(h5.id, b"waveform", stored, space).write(h5py.h5s.ALL, h5py.h5s.ALL, values)
        assert np.array_equal(h5["waveform"][()], values)
        assert ContiguousRows.of(tmp_path / "p.h5", h5["waveform"]) is None


def test_a_replaced_file_is_still_read_from_the_file_h5py_opened(tmp_path):
    """The reader reads through the descriptor of h5py's own open file: replacing the path (as a
    pack into the same name would) changes neither the batch rows nor their targets."""
    old = _write(tmp_path / "a.h5", seed=1)
    _write(tmp_path / "new.h5", seed=2)
    ds = AudioSetHDF5(tmp_path / "a.h5", clip_samples=S)
    assert np.array_equal(ds[0]["waveform"].numpy(), old[0])  # h5py opens the file: one item
    (tmp_path / "new.h5").replace(tmp_path / "a.h5")
    after = collate_clips(ds.__getitems__([3, 1]))  # the first batch read, after the replacement
    assert np.array_equal(after["waveform"].numpy(), old[[3, 1]])
    ds.close()


@pytest.mark.parametrize(
    "layout", [dict(chunks=(1, S)), dict(chunks=(1, S), compression="gzip")], ids=["chunked", "compressed"]
)
def test_layouts_it_cannot_read_fall_back_to_h5py(tmp_path, layout):
    waves = _write(tmp_path / "a.h5", **layout)
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        assert ContiguousRows.of(tmp_path / "a.h5", h5["waveform"]) is None
    ds = AudioSetHDF5(tmp_path / "a.h5", clip_samples=S)
    batch = collate_clips(ds.__getitems__([4, 1, 4]))
    assert np.array_equal(batch["waveform"].numpy(), waves[[4, 1, 4]])
    ds.close()


def test_dataset_reads_panns_files_through_it(tmp_path, monkeypatch):
    """A PANNs-layout file (contiguous int16) goes through the reader, in this process and in
    loader workers, and gives the same batches as h5py."""
    import os

    waves_a = _write(tmp_path / "a.h5", seed=1)
    waves_b = _write(tmp_path / "b.h5", rows=4, seed=2)
    marks = tmp_path / "readers.txt"
    read_into = ContiguousRows.read_into

    def spy(self, *args):
        with open(marks, "a") as f:  # from any process (a forked worker inherits the patch)
            f.write(f"{os.getpid()} {self.path.name}\n")
        return read_into(self, *args)

    monkeypatch.setattr(ContiguousRows, "read_into", spy)
    ds = AudioSetHDF5([tmp_path / "a.h5", tmp_path / "b.h5"], clip_samples=S)
    order = [10, 2, 0, 12, 2]
    batch = collate_clips(ds.__getitems__(order))
    every = np.concatenate([waves_a, waves_b])
    assert np.array_equal(batch["waveform"].numpy(), every[order])
    here = sorted(line.split()[1] for line in marks.read_text().splitlines())
    assert here == ["a.h5", "b.h5"]
    marks.unlink()
    ctx = torch.multiprocessing.get_context("fork")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=5, sampler=order, num_workers=1, collate_fn=collate_clips, multiprocessing_context=ctx
    )
    (from_worker,) = list(loader)
    assert torch.equal(from_worker["waveform"], batch["waveform"])
    workers = {line.split()[0] for line in marks.read_text().splitlines()}
    assert workers and str(os.getpid()) not in workers
    ds.close()


def test_a_foreign_byte_order_is_left_to_h5py(tmp_path):
    _write(tmp_path / "a.h5", dtype=">i2")
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        assert ContiguousRows.of(tmp_path / "a.h5", h5["waveform"]) is None


def test_a_file_that_ends_inside_a_row_is_an_error_naming_it(tmp_path):
    _write(tmp_path / "a.h5", rows=2)
    size = (tmp_path / "a.h5").stat().st_size
    reader = ContiguousRows(tmp_path / "a.h5", size - S, (2, S), np.dtype(np.int16))  # row 0 runs past the end
    with pytest.raises(UsageError, match=r"a\.h5: the file ends inside row 0"):
        reader.read_into(np.empty((1, S), np.int16), np.array([0]), np.array([0]))
    reader.close()


def test_an_empty_dataset_has_no_offset_and_falls_back(tmp_path):
    with h5py.File(tmp_path / "e.h5", "w") as h5:
        create_layout(h5, 0, 5, S)
        assert ContiguousRows.of(tmp_path / "e.h5", h5["waveform"]) is None


# --- rows read later, by the loader's pin-memory stage ------------------------------------------


def _open_descriptors() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_deferred_batches_read_the_same_rows_in_another_process(tmp_path):
    """With ``defer_pcm_reads`` a batch carries which rows to read; read after a pickle round trip
    (a worker hands it to the main process) it equals the batch read at once, targets and all,
    with the rows split over the read threads, and leaves no descriptor open."""
    import pickle

    from dcls_audio.data.contiguous_rows import PendingRows

    waves_a = _write(tmp_path / "a.h5", rows=40, seed=1)
    waves_b = _write(tmp_path / "b.h5", rows=30, seed=2)
    every = np.concatenate([waves_a, waves_b])
    ds = AudioSetHDF5([tmp_path / "a.h5", tmp_path / "b.h5"], clip_samples=S)
    order = [69, 2, 0, 45, 2, *range(5, 35), 41, 68]
    now = collate_clips(ds.__getitems__(order))
    ds.defer_pcm_reads = True
    items = ds.__getitems__(order)
    later = collate_clips(items)
    assert isinstance(later["waveform"], PendingRows) and len(later["waveform"]) == len(order)
    assert items[0]["waveform"] is None and items[0]["index"] == 69
    for key in ("target", "index"):
        assert torch.equal(later[key], now[key])
    assert later["audio_name"] == now["audio_name"] and later["undecodable"] == 0
    sent = pickle.loads(pickle.dumps(later["waveform"]))
    before = _open_descriptors()
    wave = sent.read()
    assert _open_descriptors() == before
    assert wave.dtype == torch.int16 and torch.equal(wave, now["waveform"])
    assert np.array_equal(wave.numpy(), every[order])
    ds.close()


def test_a_deferred_read_refuses_a_replaced_file(tmp_path):
    _write(tmp_path / "a.h5", seed=1)
    _write(tmp_path / "new.h5", seed=2)
    ds = AudioSetHDF5(tmp_path / "a.h5", clip_samples=S)
    ds.defer_pcm_reads = True
    import pickle

    pending = pickle.loads(pickle.dumps(collate_clips(ds.__getitems__([3, 1]))["waveform"]))
    (tmp_path / "new.h5").replace(tmp_path / "a.h5")
    with pytest.raises(UsageError, match=r"a\.h5: the file was replaced while it was being read"):
        pending.read()
    ds.close()


def test_batches_with_encoded_or_chunked_rows_are_read_at_once(tmp_path):
    waves = _write(tmp_path / "a.h5")
    _write(tmp_path / "c.h5", chunks=(1, S))
    ds = AudioSetHDF5([tmp_path / "a.h5", tmp_path / "c.h5"], clip_samples=S)
    ds.defer_pcm_reads = True
    mixed = collate_clips(ds.__getitems__([1, 10]))["waveform"]  # row 10 is in the chunked file
    assert isinstance(mixed, torch.Tensor) and np.array_equal(mixed.numpy()[0], waves[1])
    from dcls_audio.data.contiguous_rows import PendingRows

    assert isinstance(collate_clips(ds.__getitems__([1, 2]))["waveform"], PendingRows)  # all contiguous
    ds.close()


def test_the_data_module_defers_only_where_the_loader_pins(tmp_path):
    from dcls_audio.data import AudioSetDataModule

    _write(tmp_path / "a.h5")
    dm = AudioSetDataModule(train_files=tmp_path / "a.h5", batch_size=2, num_workers=0, pin_memory=True, clip_samples=S)
    dm.setup("fit")
    dm.train_dataloader()
    assert dm.datasets["train"].defer_pcm_reads is torch.cuda.is_available()
    dm.teardown()


def test_without_a_trainer_pinning_follows_the_machine_whatever_the_workers(tmp_path, monkeypatch):
    """No trainer attached (a DataModule used by hand): an unset pin_memory follows what this process
    could train on, also when the worker count is given."""
    from dcls_audio.data import AudioSetDataModule

    _write(tmp_path / "a.h5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    common = dict(train_files=tmp_path / "a.h5", batch_size=2, clip_samples=S)
    for workers in (None, 0, 2):
        assert AudioSetDataModule(num_workers=workers, **common).loader_settings().pin_memory, workers
    assert not AudioSetDataModule(num_workers=2, pin_memory=False, **common).loader_settings().pin_memory


@pytest.mark.cuda
def test_cuda_loader_workers_hand_over_rows_read_into_pinned_memory(tmp_path):
    """On a GPU machine the DataModule's loader (workers, pinning) delivers pinned batches equal to
    the file's rows, read in the main process."""
    from dcls_audio.data import AudioSetDataModule

    waves = _write(tmp_path / "a.h5", rows=64)
    dm = AudioSetDataModule(train_files=tmp_path / "a.h5", batch_size=8, num_workers=2, clip_samples=S, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert dm.datasets["train"].defer_pcm_reads
    for batch in loader:
        assert batch["waveform"].is_pinned()
        assert np.array_equal(batch["waveform"].numpy(), waves[batch["index"].numpy()])
    dm.teardown()
