"""AudioSetDataModule: early input checks, class info, loaders, per-rank sharding, a Lightning run."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from dcls_audio.data import AudioSetDataModule, BalancedSampler, EvalShardSampler, UniformSampler
from dcls_audio.data.hdf5_dataset import write_hdf5

S = 320000


def make_file(path, n, num_classes=4, seed=0, start=0):
    rng = np.random.default_rng(seed)
    waves = rng.integers(-100, 100, size=(n, S), dtype=np.int16)
    targets = np.zeros((n, num_classes), dtype=bool)
    targets[np.arange(n), np.arange(n) % num_classes] = True
    write_hdf5(path, [f"clip{start + i}" for i in range(n)], waves, targets)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    return {
        "train": [make_file(root / "t1.h5", 6, seed=1), make_file(root / "t2.h5", 4, seed=2, start=6)],
        "val": make_file(root / "val.h5", 7, seed=3),
    }


def test_inputs_are_checked_before_training(tmp_path, files):
    with pytest.raises(FileNotFoundError, match="val_files: HDF5 file not found: .*missing.h5"):
        AudioSetDataModule(train_files=files["train"], val_files=tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="sampler must be one of"):
        AudioSetDataModule(train_files=files["train"], sampler="random")
    with pytest.raises(ValueError, match="batch_size"):
        AudioSetDataModule(train_files=files["train"], batch_size=0)
    with pytest.raises(ValueError, match="at least one"):
        AudioSetDataModule()
    with pytest.raises(FileNotFoundError, match="class_csv"):
        AudioSetDataModule(train_files=files["train"], class_csv=tmp_path / "none.csv")
    other = make_file(tmp_path / "other.h5", 2, num_classes=5)
    dm = AudioSetDataModule(train_files=files["train"], val_files=other)
    with pytest.raises(ValueError, match="other.h5: dataset 'target' has 5 classes"):
        _ = dm.num_classes


def test_class_info_and_loaders(files):
    dm = AudioSetDataModule(
        train_files=files["train"], val_files=files["val"], batch_size=4, num_workers=0, pin_memory=False
    )
    assert dm.num_classes == 4 and dm.class_names == ["class_000", "class_001", "class_002", "class_003"]
    assert dm.class_mids == [""] * 4
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 2  # 10 clips, batch 4, last partial batch dropped
    batch = train[0]
    assert batch["waveform"].shape == (4, S) and batch["waveform"].dtype == torch.int16
    assert batch["target"].shape == (4, 4) and batch["target"].dtype == torch.float32
    assert batch["index"].dtype == torch.int64 and isinstance(batch["audio_name"], list)
    val = list(dm.val_dataloader())
    assert torch.cat([b["index"] for b in val]).tolist() == list(range(7))


def test_samplers_follow_the_trainer_rank(files):
    seen = []
    for rank in range(3):
        dm = AudioSetDataModule(
            train_files=files["train"],
            val_files=files["val"],
            batch_size=2,
            num_workers=0,
            pin_memory=False,
            sampler="balanced",
            seed=5,
        )
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=3)
        dm.setup("fit")
        train_sampler = dm.train_dataloader().sampler
        assert isinstance(train_sampler, BalancedSampler) and len(train_sampler) == 3
        assert (train_sampler.num_replicas, train_sampler.rank) == (3, rank)
        val_loader = dm.val_dataloader()
        assert isinstance(val_loader.sampler, EvalShardSampler)
        seen += torch.cat([b["index"] for b in val_loader]).tolist()
    assert sorted(seen) == list(range(7))  # evaluation: every clip once over the 3 ranks


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)
        self.train_indices, self.val_indices = [], []

    def training_step(self, batch, _):
        self.train_indices.append((self.current_epoch, batch["index"].tolist()))
        return torch.nn.functional.binary_cross_entropy_with_logits(self.layer(batch["target"]), batch["target"])

    def validation_step(self, batch, _):
        self.val_indices += batch["index"].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_sets_epochs_and_keeps_our_samplers(files):
    dm = AudioSetDataModule(
        train_files=files["train"], val_files=files["val"], batch_size=5, num_workers=0, pin_memory=False, seed=1
    )
    model = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    epochs = {}
    for epoch, indices in model.train_indices:
        epochs.setdefault(epoch, []).extend(indices)
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
    expected = [list(UniformSampler(10, seed=1)), None]
    sampler = UniformSampler(10, seed=1)
    sampler.set_epoch(1)
    expected[1] = list(sampler)
    assert epochs[0] == expected[0] and epochs[1] == expected[1]  # Lightning called set_epoch
    assert sorted(model.val_indices) == sorted(list(range(7)) * 2)


def test_loader_settings_follow_the_machine_when_unset(files):
    from dcls_audio.data.datamodule import auto_loader_settings

    gpu = auto_loader_settings(devices_per_node=2, accelerator="cuda", cores=16)
    assert (gpu.num_workers, gpu.pin_memory, gpu.persistent_workers, gpu.prefetch_factor) == (7, True, True, 4)
    assert auto_loader_settings(accelerator="cuda", cores=64).num_workers == 12  # capped
    cpu = auto_loader_settings(accelerator="cpu", cores=2)
    assert (cpu.num_workers, cpu.pin_memory, cpu.persistent_workers, cpu.prefetch_factor) == (1, False, True, 4)
    none = auto_loader_settings(accelerator="cpu", cores=1)
    assert (none.num_workers, none.persistent_workers, none.prefetch_factor) == (0, False, None)
    given = auto_loader_settings(num_workers=3, pin_memory=False, prefetch_factor=6, accelerator="cuda", cores=16)
    assert (given.num_workers, given.pin_memory, given.prefetch_factor) == (3, False, 6)
    dm = AudioSetDataModule(train_files=files["train"], batch_size=2, num_workers=0, pin_memory=False)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, num_devices=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 0 and loader.pin_memory is False
    batch = next(iter(loader))
    assert batch["waveform"].shape == (2, S) and batch["index"].shape == (2,)
    with pytest.raises(ValueError, match="prefetch_factor"):
        AudioSetDataModule(train_files=files["train"], prefetch_factor=0)
