"""`pack --shards` (litdata) read by the DataModule from a local folder: the same clips as the
HDF5 file, every clip once per epoch across ranks, the same order for a seed, a run resumed
inside an epoch gets exactly the remaining batches; a shard that cannot be read is an error
naming it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dcls_audio.data import AudioSetDataModule, AudioSetHDF5
from dcls_audio.data.pack import pack_panns
from dcls_audio.data.shards import AudioSetShards, ShardReadError
from dcls_audio.errors import UsageError

pytest.importorskip("litdata", reason="the shards extra (litdata) is not installed")

LABELS = [[i % 5, 7] if i % 3 else [i % 5] for i in range(11)]


@pytest.fixture(scope="module")
def source(tmp_path_factory, tone_h5) -> Path:
    return tone_h5(tmp_path_factory.mktemp("src") / "train.h5", LABELS)


@pytest.fixture(scope="module")
def shards(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "train_shards"
    report = pack_panns(source, out, "flac", progress=False, shards=True, part_clips=4)
    assert report.packed == len(LABELS)
    return out


def _rank(dm: AudioSetDataModule, rank: int, world: int) -> AudioSetDataModule:
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, num_devices=1, accelerator=None)
    return dm


def _train_indices(location, rank=0, world=1, epoch=0, seed=3, position=None) -> list[list[int]]:
    dm = AudioSetDataModule(train_files=[location], batch_size=2, num_workers=0, seed=seed)
    dm.setup("fit")
    if position is not None:
        dm.load_state_dict({"train_position": position})
    _rank(dm, rank, world)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [batch["index"].tolist() for batch in loader]


def test_shards_hold_the_clips_of_the_hdf5_file(source, shards):
    ref, got = AudioSetHDF5(source), AudioSetShards(shards)
    assert len(got) == len(ref) and got.num_classes == ref.num_classes == 527
    a, b = ref.__getitems__(range(len(ref))).collated, got.__getitems__(range(len(got))).collated
    assert a["audio_name"] == b["audio_name"]
    assert a["waveform"].equal(b["waveform"]) and a["target"].equal(b["target"])
    assert json.loads((shards / "clips.json").read_text())["codec"] == "flac"


def test_every_clip_once_per_epoch_across_ranks_in_a_seeded_order(shards):
    world = 2
    per_rank = [sum(_train_indices(shards, rank, world), []) for rank in range(world)]
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == len(set(seen)) == 8  # 11 clips: 5 per rank, batches of 2 -> 2 full batches each
    again = [sum(_train_indices(shards, rank, world), []) for rank in range(world)]
    assert again == per_rank
    assert _train_indices(shards, 0, world, epoch=1) != _train_indices(shards, 0, world, epoch=0)
    assert _train_indices(shards, seed=4) != _train_indices(shards, seed=3)


def test_the_same_order_as_the_hdf5_file(source, shards):
    assert _train_indices(shards) == _train_indices(source)


def test_resumed_inside_an_epoch_reads_exactly_the_remaining_batches(shards):
    whole = _train_indices(shards, epoch=1)
    assert len(whole) == 5
    assert _train_indices(shards, epoch=1, position=[1, 2]) == whole[2:]
    assert _train_indices(shards, epoch=2, position=[1, 2]) == _train_indices(shards, epoch=2)  # another epoch


def test_loader_workers_decode_the_shards(source, shards):
    batches = {}
    for location in (source, shards):
        dm = AudioSetDataModule(val_files=[location], eval_batch_size=3, num_workers=2)
        dm.setup("validate")
        batches[location] = list(dm.val_dataloader())
    for a, b in zip(batches[source], batches[shards], strict=True):
        assert a["waveform"].equal(b["waveform"]) and a["index"].equal(b["index"])


def _copy(shards: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(shards, tmp_path / "copy"))


def test_a_truncated_or_missing_shard_is_an_error_naming_it(shards, tmp_path):
    copy = _copy(shards, tmp_path)
    chunk = sorted(copy.glob("chunk-*.bin"))[0]
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(ShardReadError, match=f"{chunk}: shard cannot be read"):
        AudioSetDataModule(train_files=[copy]).setup("fit")
    chunk.unlink()
    with pytest.raises(ShardReadError, match=f"{chunk}: shard listed in .* is missing"):
        AudioSetShards(copy)


def test_a_shard_with_corrupt_contents_is_an_error_naming_it(shards, tmp_path):
    copy = _copy(shards, tmp_path)
    chunk = sorted(copy.glob("chunk-*.bin"))[0]
    data = bytearray(chunk.read_bytes())
    data[:8] = b"\xff" * 8  # the chunk's header: its item count and offsets
    chunk.write_bytes(bytes(data))
    with pytest.raises(ShardReadError, match=chunk.name):
        dataset = AudioSetShards(copy)
        dataset.__getitems__([0, 1])


def test_a_clip_that_does_not_decode_is_left_out_and_counted(shards, tmp_path):
    copy = _copy(shards, tmp_path)
    chunk = sorted(copy.glob("chunk-*.bin"))[0]
    data = chunk.read_bytes()
    at = data.find(b"fLaC", data.find(b"fLaC") + 4)  # the second clip's FLAC stream
    chunk.write_bytes(data[:at] + b"XXXX" + data[at + 4 :])
    dataset = AudioSetShards(copy)
    batch = dataset.__getitems__([0, 1, 2]).collated
    assert batch["index"].tolist() == [0, 2] and len(dataset.undecodable) == 1
    assert np.array_equal(batch["waveform"][1].numpy(), AudioSetShards(shards)[2]["waveform"].numpy())


def test_a_shard_folder_is_a_split_s_only_entry(source, shards):
    with pytest.raises(ValueError, match="must be the split's only entry"):
        AudioSetDataModule(train_files=[source, shards])


def test_shards_never_replace_a_folder_that_is_not_shards_or_that_holds_an_input(source, tmp_path):
    """--overwrite replaces an earlier shard folder only, and never one holding an input: a typo
    naming a data folder leaves it alone."""
    data = tmp_path / "data"
    data.mkdir()
    keep = data / "notes.txt"
    keep.write_text("mine")
    copy = data / "train.h5"
    copy.write_bytes(source.read_bytes())
    for target in (data, tmp_path):  # the input's folder; a folder above it
        with pytest.raises(UsageError, match="is not a shard folder .* refusing to replace it"):
            pack_panns(copy, target, "flac", progress=False, shards=True, overwrite=True)
    out = tmp_path / "shards"
    pack_panns(copy, out, "flac", progress=False, shards=True)
    pack_panns(copy, out, "flac", progress=False, shards=True, overwrite=True)  # shards replace shards
    assert len(AudioSetShards(out)) == len(LABELS)
    inside = out / "train.h5"
    inside.write_bytes(source.read_bytes())
    with pytest.raises(UsageError, match="holds an input .* refusing to replace it"):
        pack_panns(inside, out, "flac", progress=False, shards=True, overwrite=True)
    assert keep.read_text() == "mine" and copy.read_bytes() == inside.read_bytes() == source.read_bytes()


def _balanced_sampler(location):
    dm = AudioSetDataModule(train_files=[location], sampler="balanced", batch_size=2, num_workers=0, seed=0)
    dm.setup("fit")  # opens the shards (reads one item for the codec and class count)
    return dm


def test_the_balanced_sampler_takes_the_labels_sidecar_and_reads_no_item(source, shards, tmp_path, monkeypatch, caplog):
    """pack writes labels.npz next to the index: the sampler's weights need no item read (each
    would download a chunk from a bucket); shards without it are scanned, with the same weights."""
    reads: list[int] = []
    real_item = AudioSetShards._item
    monkeypatch.setattr(AudioSetShards, "_item", lambda self, index: reads.append(index) or real_item(self, index))
    assert (shards / "labels.npz").is_file()
    with_sidecar = _balanced_sampler(shards)
    reads.clear()
    sampler = with_sidecar.train_sampler()
    assert reads == []

    older = _copy(shards, tmp_path)
    (older / "labels.npz").unlink()  # as shards of an older pack
    without = _balanced_sampler(older)
    reads.clear()
    with caplog.at_level(logging.WARNING, logger="dcls_audio.data.shards"):
        scanned = without.train_sampler()
    assert sorted(reads) == list(range(len(LABELS)))
    assert "labels.npz" in caplog.text and "reading every clip" in caplog.text
    assert np.array_equal(sampler.probabilities, scanned.probabilities)
    hdf5 = AudioSetDataModule(train_files=[source], sampler="balanced", batch_size=2, num_workers=0)
    hdf5.setup("fit")
    np.testing.assert_allclose(sampler.probabilities, hdf5.train_sampler().probabilities, rtol=1e-12)


def test_a_labels_sidecar_that_does_not_match_the_shards_is_not_used(shards, tmp_path, caplog):
    copy = _copy(shards, tmp_path)
    with np.load(copy / "labels.npz") as sidecar:
        labels, offsets = sidecar["labels"], sidecar["label_offsets"]
    np.savez(copy / "labels.npz", labels=labels[:-1], label_offsets=offsets[:-1], num_classes=np.int64(527))
    dataset = AudioSetShards(copy)
    with caplog.at_level(logging.WARNING, logger="dcls_audio.data.shards"):
        targets = np.concatenate(list(dataset.iter_targets()))
    assert "does not match" in caplog.text
    expected = np.zeros((len(LABELS), 527), bool)
    for row, classes in enumerate(LABELS):
        expected[row, classes] = True
    assert np.array_equal(targets, expected)


def test_the_labels_sidecar_of_a_remote_location_is_fetched_into_the_cache(shards, tmp_path, monkeypatch):
    """litdata's ``local:`` locations go through its downloader and chunk cache as a bucket's do."""
    from dcls_audio.data import shards as shards_module

    monkeypatch.setattr(shards_module, "_REMOTE", (*shards_module._REMOTE, "local:"))
    remote = AudioSetShards(f"local:{shards}", cache_dir=str(tmp_path / "cache"))
    reads: list[int] = []
    real_item = AudioSetShards._item
    monkeypatch.setattr(AudioSetShards, "_item", lambda self, index: reads.append(index) or real_item(self, index))
    targets = np.concatenate(list(remote.iter_targets()))
    assert reads == [] and len(list((tmp_path / "cache").rglob("labels.npz"))) == 1
    assert np.array_equal(targets, np.concatenate(list(AudioSetShards(shards).iter_targets())))
    assert [sorted(np.flatnonzero(row)) for row in targets] == [sorted(labels) for labels in LABELS]
