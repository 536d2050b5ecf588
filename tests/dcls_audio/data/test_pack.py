"""`dcls-audio pack`: round trip of generated files through the HDF5 layout."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from dcls_audio import cli
from dcls_audio.data import AudioReadError, AudioSetHDF5, load_audio, load_class_names
from dcls_audio.data.pack import match_ytid, pack_folder, read_segments_csv

AF = pytest.importorskip("torchaudio.functional", reason="torchaudio (the test oracle) is not installed")

MIDS = {c.mid: c.index for c in load_class_names()}
SPEECH, DOG, SIREN = "/m/09x0r", "/m/0bt9lr", "/m/03kmc9"


def sine(freq, seconds, sr, amp):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def folder(tmp_path):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    left, right = sine(1000, 3, 44100, 0.5), sine(1000, 3, 44100, 0.3)
    sf.write(audio / "Y--PJHxphWEs.wav", np.stack([left, right], 1), 44100, subtype="PCM_16")
    sf.write(audio / "sub" / "abc_DEF-123_30.000.flac", sine(500, 12, 8000, 0.6), 8000)
    sf.write(audio / "mp3clip0000.mp3", sine(2000, 2, 44100, 0.4), 44100)
    sf.write(audio / "nolabel0000.wav", sine(300, 1, 16000, 0.5), 16000)
    sf.write(audio / "Ytrunc000000_10_20.wav", sine(700, 4, 22050, 0.5), 22050, subtype="PCM_16")
    data = (audio / "Ytrunc000000_10_20.wav").read_bytes()
    (audio / "Ytrunc000000_10_20.wav").write_bytes(data[: len(data) // 3])
    (audio / "corrupt0000.ogg").write_bytes(b"OggS" + bytes(range(256)) * 4)
    (audio / "notes.txt").write_text("not audio")
    labels = tmp_path / "segments.csv"
    labels.write_text(
        "# Segments csv\n# YTID, start_seconds, end_seconds, positive_labels\n"
        f'--PJHxphWEs, 30.000, 40.000, "{SPEECH},{DOG}"\n'
        f'abc_DEF-123, 30.000, 40.000, "{SIREN},/m/unknown"\n'
        f'mp3clip0000, 0.000, 10.000, "{DOG}"\n'
        f'trunc000000, 10.000, 20.000, "{SPEECH}"\n'
        f'corrupt0000, 0.000, 10.000, "{SPEECH}"\n'
    )
    return audio, labels, tmp_path / "out" / "packed.h5"


def test_pack_round_trip(folder):
    audio, labels, out = folder
    report = pack_folder(audio, labels, out, progress=False)
    assert report.packed == 3
    assert sorted(p.name for p, _ in report.unreadable) == ["Ytrunc000000_10_20.wav", "corrupt0000.ogg"]
    assert "truncated" in dict((p.name, why) for p, why in report.unreadable)["Ytrunc000000_10_20.wav"]
    for path, why in report.unreadable:  # the reason alone: the report names the file
        assert path.name not in why and not why.startswith(("cannot decode", "Error opening")), why
    listed = [line for line in report.summary().splitlines() if "corrupt0000.ogg" in line]
    assert len(listed) == 1 and listed[0].count("corrupt0000.ogg") == 1
    assert [p.name for p, _ in report.unlabelled] == ["nolabel0000.wav"]
    assert report.unknown_mids == {"/m/unknown": 1}
    assert list(out.parent.iterdir()) == [out]  # the temporary file is gone
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as a new file, not mkstemp's 0600

    ds = AudioSetHDF5(out)
    items = {ds[i]["audio_name"]: ds[i] for i in range(len(ds))}
    assert set(items) == {"--PJHxphWEs", "abc_DEF-123", "mp3clip0000"}
    assert items["--PJHxphWEs"]["target"].nonzero().flatten().tolist() == sorted([MIDS[SPEECH], MIDS[DOG]])
    assert items["abc_DEF-123"]["target"].nonzero().flatten().tolist() == [MIDS[SIREN]]

    # 44.1 kHz stereo, 3 s: the channel mean resampled to 32 kHz, then zeros up to 10 s
    stereo = items["--PJHxphWEs"]["waveform"].double() / 2**15
    expected = AF.resample(torch.from_numpy(sine(1000, 3, 44100, 0.4)).double(), 44100, 32000)
    assert stereo.shape == (320000,)
    torch.testing.assert_close(stereo[200:95800], expected[200:95800], atol=3e-4, rtol=0)
    assert stereo[96100:].abs().max() == 0
    # 8 kHz mono, 12 s: cut to 10 s; a 500 Hz tone all the way
    mono = items["abc_DEF-123"]["waveform"].double() / 2**15
    spectrum = torch.fft.rfft(mono).abs()
    assert abs(int(spectrum.argmax()) / 10 - 500) < 1
    assert mono[-32000:].abs().max() > 0.5
    assert abs(mono.pow(2).mean().sqrt().item() - 0.6 / np.sqrt(2)) < 0.01
    # mp3 decodes through soundfile
    mp3 = items["mp3clip0000"]["waveform"].double() / 2**15
    assert abs(int(torch.fft.rfft(mp3[:64000]).abs().argmax()) / 2 - 2000) < 2


def test_refuses_to_overwrite_and_cli(folder, capsys):
    audio, labels, out = folder
    out.parent.mkdir()
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        pack_folder(audio, labels, out, progress=False)
    assert cli.main(["pack", str(audio), str(labels), str(out), "--no-progress"]) == 1
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert cli.main(["pack", str(audio), str(labels), str(out), "--overwrite", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "packed 3 clips" in printed and "2 unreadable files skipped" in printed
    assert "corrupt0000.ogg" in printed and "nolabel0000.wav" in printed
    assert len(AudioSetHDF5(out)) == 3


def test_pack_with_worker_processes_matches_in_process(folder):
    audio, labels, out = folder
    pack_folder(audio, labels, out, progress=False)
    other = out.with_name("workers.h5")
    pack_folder(audio, labels, other, progress=False, num_workers=1)
    a, b = AudioSetHDF5(out), AudioSetHDF5(other)
    assert [a[i]["audio_name"] for i in range(3)] == [b[i]["audio_name"] for i in range(3)]
    assert all(torch.equal(a[i]["waveform"], b[i]["waveform"]) for i in range(3))


def test_pack_errors(tmp_path, folder):
    audio, labels, out = folder
    with pytest.raises(FileNotFoundError, match="audio folder not found"):
        pack_folder(tmp_path / "none", labels, out)
    with pytest.raises(FileNotFoundError, match="labels CSV not found"):
        pack_folder(audio, tmp_path / "none.csv", out)
    bad = tmp_path / "bad.csv"
    bad.write_text("# c\nonlytwo, 1.0\n")
    with pytest.raises(ValueError, match="bad.csv, line 2"):
        read_segments_csv(bad)
    other = tmp_path / "other.csv"
    other.write_text(f'zzzzzzzzzzz, 0, 10, "{SPEECH}"\n')
    with pytest.raises(ValueError, match="matches a labelled YTID"):
        pack_folder(audio, other, out, progress=False)


def test_match_ytid_forms():
    known = {"--PJHxphWEs", "abc_DEF-123", "Yabcdefghij"}
    assert match_ytid("--PJHxphWEs", known) == "--PJHxphWEs"
    assert match_ytid("Y--PJHxphWEs", known) == "--PJHxphWEs"
    assert match_ytid("--PJHxphWEs_30.000", known) == "--PJHxphWEs"
    assert match_ytid("Y--PJHxphWEs_30.000_40.000", known) == "--PJHxphWEs"
    assert match_ytid("abc_DEF-123_30000", known) == "abc_DEF-123"
    assert match_ytid("Yabcdefghij", known) == "Yabcdefghij"  # an exact id wins over the Y prefix
    assert match_ytid("abc_DEF", known) is None


def test_load_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"fLaC" + b"\x00" * 100)
    with pytest.raises(AudioReadError, match="junk.flac") as info:
        load_audio(junk)
    err = info.value
    assert err.path == junk and err.reason and str(err) == f"cannot decode audio file {junk}: {err.reason}"
    assert "junk.flac" not in err.reason and "Error opening" not in err.reason  # the path once, in str()
    again = pickle.loads(pickle.dumps(err))  # crosses worker processes
    assert type(again) is AudioReadError and (again.path, again.reason, str(again)) == (err.path, err.reason, str(err))
    sf.write(tmp_path / "ok.wav", sine(440, 0.5, 48000, 0.5), 48000)
    wave, sr = load_audio(tmp_path / "ok.wav")
    assert sr == 48000 and wave.dtype == torch.float32 and wave.shape == (16000,)


def test_report_names_segments_without_audio_repeated_ytids_and_a_bom(folder):
    audio, labels, out = folder
    text = labels.read_text() + f'missing0000, 0, 10, "{DOG}"\n--PJHxphWEs, 40.000, 50.000, "{SIREN}"\n'
    labels.write_bytes(b"\xef\xbb\xbf" + f'bomfirst000, 0, 10, "{DOG}"\n'.encode() + text.encode())
    report = pack_folder(audio, labels, out, progress=False)
    summary = report.summary()
    assert report.without_audio == ["bomfirst000", "missing0000"]  # the BOM is not part of the first YTID
    assert "2 segments of the labels CSV without an audio file: bomfirst000, missing0000" in summary
    assert f"labels CSV {labels}: UTF-8 with a byte-order mark" in summary
    assert f"labels CSV {labels}: 1 YTID(s) on several lines, labels merged: --PJHxphWEs" in summary
    assert "files for an already packed YTID" not in summary
    packed = AudioSetHDF5(out)
    first = next(packed[i] for i in range(len(packed)) if packed[i]["audio_name"] == "--PJHxphWEs")
    assert first["target"][[MIDS[SPEECH], MIDS[DOG], MIDS[SIREN]]].tolist() == [1, 1, 1]


def test_a_csv_in_another_encoding_or_the_output_as_input_is_an_error(folder, capsys):
    audio, labels, out = folder
    latin = labels.with_name("latin.csv")
    latin.write_bytes(labels.read_bytes() + 'caf\xe9000000, 0, 10, "/m/09x0r"\n'.encode("latin-1"))
    assert cli.main(["pack", str(audio), str(latin), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"labels CSV {latin}: not UTF-8 text (line 8" in err and "Traceback" not in err
    utf16 = labels.with_name("utf16.csv")
    utf16.write_bytes(labels.read_text().encode("utf-16"))  # with its BOM
    assert pack_folder(audio, utf16, out, progress=False).packed == 3
    before = labels.read_bytes()
    assert cli.main(["pack", str(audio), str(labels), str(labels), "--overwrite", "--no-progress"]) == 1
    assert "is also an input" in capsys.readouterr().err and labels.read_bytes() == before


def test_the_output_is_never_an_audio_file_or_a_folder_even_with_overwrite(folder, capsys):
    audio, labels, _ = folder
    victim = audio / "Y--PJHxphWEs.wav"
    before = victim.read_bytes()
    assert cli.main(["pack", str(audio), str(labels), str(victim), "--overwrite", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "is also an input" in err and "Traceback" not in err and victim.read_bytes() == before
    assert cli.main(["pack", str(audio), str(labels), str(audio / "sub"), "--overwrite", "--no-progress"]) == 1
    assert "is a folder" in capsys.readouterr().err
