"""`dcls-audio pack --codec flac|opus` and `--from PANNS.h5`: what the readers get back equals (FLAC)
or is close to (Opus) the PCM clips; a pack interrupted part-way resumes; rows that do not
decode are left out and counted, the epoch goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from dcls_audio import cli
from dcls_audio.data import AudioSetDataModule, AudioSetHDF5, pack_parts
from dcls_audio.data import pack as pack_module
from dcls_audio.data.hdf5_dataset import inspect_file
from dcls_audio.data.pack import pack_panns
from dcls_audio.errors import UsageError

ROOT = Path(__file__).resolve().parents[3]


def _everything(path: Path) -> dict:
    """All clips of a file through AudioSetHDF5, in order, as one batch."""
    dataset = AudioSetHDF5(path)
    return dataset.__getitems__(range(len(dataset))).collated


def test_flac_conversion_reads_back_identical_to_pcm(panns, tmp_path):
    out = tmp_path / "eval_flac.h5"
    report = pack_panns(panns, out, "flac", progress=False, part_clips=5, num_workers=2)
    assert report.packed == 12 and report.empty_rows == 1 and not report.unreadable
    assert "1 rows with an empty audio_name" in report.summary()
    with h5py.File(out) as h5:
        assert h5.attrs["codec"] == "flac" and "waveform" not in h5
    ref, got = _everything(panns), _everything(out)
    assert ref["audio_name"] == got["audio_name"]
    assert ref["waveform"].equal(got["waveform"])  # identical waveforms: identical eval scores
    assert ref["target"].equal(got["target"])
    assert not list(tmp_path.glob(".*"))  # no staging folder or temporary file left


def test_flac_batches_from_the_datamodule_equal_pcm(panns, tmp_path):
    out = tmp_path / "eval_flac.h5"
    pack_panns(panns, out, "flac", progress=False)
    batches = []
    for path in (panns, out):
        dm = AudioSetDataModule(test_files=[path], eval_batch_size=4, num_workers=1)
        dm.setup("test")
        batches.append(list(dm.test_dataloader()))
    for ref, got in zip(*batches, strict=True):
        assert ref["waveform"].equal(got["waveform"]) and ref["index"].equal(got["index"])


def test_opus_is_a_sixth_of_pcm_and_close(panns, tmp_path):
    out = tmp_path / "eval_opus.h5"
    report = pack_panns(panns, out, "opus", progress=False)
    assert report.packed == 12
    assert out.stat().st_size <= panns.stat().st_size / 6
    with h5py.File(out, "r") as h5:  # what a reader needs to know of the encoding
        assert (h5.attrs["codec"], int(h5.attrs["bitrate"]), int(h5.attrs["opus_packet_ms"])) == ("opus", 72000, 60)
    ref, got = _everything(panns), _everything(out)
    assert ref["target"].equal(got["target"]) and ref["audio_name"] == got["audio_name"]
    a, b = ref["waveform"].double(), got["waveform"].double()
    # the demo's tone and noise clips: waveform SNR varies (noise is coded by its band energies),
    # so compare the energy per clip: within 1 dB
    energy = 10 * ((a**2).mean(1) / (b**2).mean(1)).log10()
    assert energy.abs().max() < 1.0


def test_folder_pack_with_flac_equals_pcm(tmp_path):
    import soundfile as sf

    audio = tmp_path / "audio"
    audio.mkdir()
    t = np.arange(3 * 44100) / 44100
    sf.write(audio / "Yabc.wav", (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    sf.write(audio / "def.flac", (0.2 * np.sin(2 * np.pi * 880 * t)).astype(np.float32), 44100)
    (audio / "ghi.wav").write_bytes(b"RIFF" + bytes(60))
    labels = tmp_path / "segments.csv"
    labels.write_text('abc, 0, 10, "/m/09x0r"\ndef, 0, 10, "/m/0bt9lr"\nghi, 0, 10, "/m/0bt9lr"\n')
    pcm = pack_module.pack_folder(audio, labels, tmp_path / "pcm.h5", progress=False)
    flac = pack_module.pack_folder(audio, labels, tmp_path / "flac.h5", progress=False, codec="flac")
    assert pcm.packed == flac.packed == 2
    assert [p.name for p, _ in flac.unreadable] == ["ghi.wav"]
    assert _everything(tmp_path / "pcm.h5")["waveform"].equal(_everything(tmp_path / "flac.h5")["waveform"])


def test_an_interrupted_pack_resumes_with_the_parts_done(panns, tmp_path, monkeypatch):
    out = tmp_path / "eval_opus.h5"
    calls = []
    real = pack_module._PannsRow.__call__

    def failing(self, source):
        calls.append(source)
        if len(calls) == 7:  # in the fourth part of 2 clips
            raise KeyboardInterrupt  # Ctrl-C in the middle of a part
        return real(self, source)

    monkeypatch.setattr(pack_module._PannsRow, "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        pack_panns(panns, out, "flac", progress=False, part_clips=2)
    assert not out.exists()
    staging = tmp_path / f".{out.name}.parts"
    assert sorted(p.name for p in staging.glob("part-*")) == [f"part-00000{i}.npz" for i in range(3)]
    calls.clear()
    monkeypatch.setattr(
        pack_module._PannsRow, "__call__", lambda self, source: calls.append(source) or real(self, source)
    )
    report = pack_panns(panns, out, "flac", progress=False, part_clips=2)
    assert report.resumed_parts == 3 and report.parts == 6 and len(calls) == 6
    assert "resumed: 3 of 6 parts" in report.summary()
    assert _everything(out)["waveform"].equal(_everything(panns)["waveform"])
    assert not staging.exists()


def test_other_inputs_discard_the_parts_of_an_earlier_pack(panns, tmp_path):
    out = tmp_path / "eval.h5"
    staging = tmp_path / f".{out.name}.parts"
    staging.mkdir()
    (staging / "plan.json").write_text('{"codec": "opus"}')
    (staging / "part-000000.npz").write_bytes(b"stale")
    report = pack_panns(panns, out, "flac", progress=False)
    assert report.resumed_parts == 0 and any("discarded" in n for n in report.notes)
    assert _everything(out)["waveform"].equal(_everything(panns)["waveform"])


def test_a_killed_pack_resumes_and_leaves_no_file_under_the_final_name(panns, tmp_path):
    out = tmp_path / "eval_opus.h5"
    staging = tmp_path / f".{out.name}.parts"
    code = (
        "from dcls_audio.data.pack import pack_panns; "
        f"pack_panns({str(panns)!r}, {str(out)!r}, 'opus', progress=False, part_clips=1)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 120
    while len(list(staging.glob("part-*.npz"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(staging.glob("part-*.npz")))
    assert 3 <= done < 12 and not out.exists()
    report = pack_panns(panns, out, "opus", progress=False, part_clips=1)
    assert report.resumed_parts >= done and report.packed == 12
    assert _everything(out)["audio_name"] == _everything(panns)["audio_name"]


def test_rows_that_do_not_decode_are_left_out_and_counted(panns, tmp_path):
    out = tmp_path / "eval_flac.h5"
    pack_panns(panns, out, "flac", progress=False)
    with h5py.File(out, "r+") as h5:
        h5["encoded"][3] = np.frombuffer(b"fLaC" + bytes(200), dtype=np.uint8)
    dataset = AudioSetHDF5(out)
    batch = dataset.__getitems__([2, 3, 4]).collated
    assert batch["index"].tolist() == [2, 4] and batch["waveform"].shape == (2, 320000)
    assert [(p, r) for p, r, _ in dataset.undecodable] == [(out, 3)]
    dm = AudioSetDataModule(train_files=[out], batch_size=4, num_workers=0, seed=0)
    dm.setup("fit")
    seen = [i for batch in dm.train_dataloader() for i in batch["index"].tolist()]
    assert sorted(seen) == [i for i in range(12) if i != 3]  # the epoch went on past the row
    assert len(dm.datasets["train"].undecodable) == 1


def test_cli_pack_from_and_its_errors(panns, tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert cli.main(["pack", "--from", str(panns), str(out), "--codec", "flac", "--no-progress", "-j", "2"]) == 0
    assert "packed 12 clips (527 classes, flac)" in capsys.readouterr().out
    assert cli.main(["pack", "--from", str(panns), str(out), "--codec", "flac", "--no-progress"]) == 1
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["pack", str(tmp_path), "x.csv", str(out), "--from", str(panns)])
    assert "give OUTPUT only" in capsys.readouterr().err
    assert cli.main(["pack", "--from", str(out), str(tmp_path / "again.h5"), "--codec", "opus"]) == 1
    assert "holds flac clips" in capsys.readouterr().err


def test_a_codec_the_machine_cannot_encode_stops_before_any_work(panns, tmp_path, monkeypatch, capsys):
    from dcls_audio.data import clip_codecs

    def missing(*args, **kwargs):
        raise RuntimeError("Unknown encoder 'libopus'")

    monkeypatch.setattr(clip_codecs, "_encode_opus", missing)
    out = tmp_path / "x.h5"
    assert cli.main(["pack", "--from", str(panns), str(out), "--codec", "opus", "--no-progress"]) == 1
    assert "--codec opus: this machine cannot encode it (Unknown encoder 'libopus')" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_batch_with_no_decodable_clip_is_an_error_naming_the_file(panns, tmp_path):
    """An empty batch would give a NaN loss and stop training with a misleading message."""
    out = tmp_path / "eval_flac.h5"
    pack_panns(panns, out, "flac", progress=False)
    with h5py.File(out, "r+") as h5:
        for row in (3, 4):
            h5["encoded"][row] = np.frombuffer(b"fLaC" + bytes(200), dtype=np.uint8)
    dataset = AudioSetHDF5(out)
    assert dataset.__getitems__([3, 4, 5]).collated["index"].tolist() == [5]
    with pytest.raises(UsageError, match=rf"{out}: none of the 2 clips of a batch could be decoded"):
        dataset.__getitems__([3, 4])


def test_an_encoded_file_of_other_clip_lengths_is_refused(panns, tmp_path):
    out = tmp_path / "eval_flac.h5"
    pack_panns(panns, out, "flac", progress=False)
    with h5py.File(out, "r+") as h5:
        h5.attrs["clip_samples"] = 32000
    with pytest.raises(UsageError, match="holds clips of 32000 samples .* expected 320000"):
        AudioSetHDF5(out).__getitems__([0])
    with pytest.raises(UsageError, match="holds clips of 32000 samples"):
        inspect_file(out)


def test_pack_parts_hold_no_clips_until_a_writer_reads_one_part(panns, tmp_path, monkeypatch):
    """The output is assembled one part at a time: the parts read back hold names and labels;
    each part's clips are read from its file when the writer takes that part."""
    loads: list[str] = []
    real_load = np.load

    def counting_load(path, *args, **kwargs):
        loads.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(pack_parts.np, "load", counting_load)
    out = tmp_path / "eval_pcm.h5"
    pack_panns(panns, out, "pcm", progress=False, part_clips=5)
    # three parts (12 clips by 5): read once for names and labels, once more for the clips
    assert sorted(loads) == sorted(2 * [f"part-{n:06d}.npz" for n in range(3)])
    assert _everything(out)["waveform"].equal(_everything(panns)["waveform"])


def test_eval_counts_the_rows_that_do_not_decode(panns, tmp_path):
    """eval scores the clips that decode and says how many rows it left out (metrics.json)."""
    import json

    import torch

    from dcls_audio.evaluation.evaluate import evaluate
    from dcls_audio.models import create_model

    out = tmp_path / "eval_flac.h5"
    pack_panns(panns, out, "flac", progress=False)
    with h5py.File(out, "r+") as h5:
        h5["encoded"][3] = np.frombuffer(b"fLaC" + bytes(200), dtype=np.uint8)
    kwargs = {"depths": (1, 1, 1, 1), "dims": (8, 16, 16, 16)}
    torch.manual_seed(0)
    net = create_model("convnext_audio_tiny", num_classes=527, **kwargs)
    hparams = {"model_name": "convnext_audio_tiny", "num_classes": 527, "model_kwargs": kwargs}
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "hyper_parameters": hparams}, ckpt)
    notes: list[str] = []
    result, written, _ = evaluate(
        str(ckpt), [str(out)], tmp_path / "eval", batch_size=4, num_workers=1, accelerator="cpu", note=notes.append
    )
    metrics = json.loads((written / "metrics.json").read_text())
    assert metrics["num_rows_undecodable"] == 1 and metrics["num_clips"] == 11
    assert any("1 row(s) did not decode" in n for n in notes)


def test_training_counts_the_rows_that_do_not_decode(panns, tmp_path):
    from dcls_audio.training.config import load_config
    from dcls_audio.training.run import summary_lines, train

    out = tmp_path / "train_flac.h5"
    pack_panns(panns, out, "flac", progress=False)
    with h5py.File(out, "r+") as h5:
        h5["encoded"][3] = np.frombuffer(b"fLaC" + bytes(200), dtype=np.uint8)
    values = {
        "model.name": "convnext_audio_tiny",
        "model.depths": "[1, 1, 1, 1]",
        "model.dims": "[8, 16, 16, 16]",
        "model.kernel_count": "null",
        "model.dilated_kernel_size": "null",
        "data.train_files": str(out),
        "data.val_files": str(panns),
        "data.batch_size": "4",
        "data.num_workers": "1",
        "data.pin_memory": "false",
        "trainer.accelerator": "cpu",
        "trainer.devices": "1",
        "trainer.precision": "32",
        "trainer.enable_progress_bar": "false",
        "trainer.max_epochs": "1",
        "trainer.num_sanity_val_steps": "0",
        "trainer.logger": "csv",
        "run.output_dir": str(tmp_path / "runs"),
        "run.name": "flac",
    }
    result = train(load_config("demo", values))
    assert result.global_step == 3 and result.undecodable_rows == 1  # 12 rows, one left out, epoch goes on
    assert "1 training row(s) did not decode and were left out" in "\n".join(summary_lines(result))
