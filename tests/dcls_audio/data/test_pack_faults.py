"""`dcls-audio pack` when things go wrong around it: two packs of one OUTPUT, a worker killed,
a pack killed while it assembles the output, source files the system cannot read for a moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dcls_audio import cli
from dcls_audio.data import AudioSetHDF5, pack_parts
from dcls_audio.data.pack import pack_panns

import pack_faults

ROOT = Path(__file__).resolve().parents[3]


def _everything(path: Path) -> dict:
    dataset = AudioSetHDF5(path)
    return dataset.__getitems__(range(len(dataset))).collated


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}


def test_a_second_pack_of_the_same_output_stops_at_once_naming_it(panns, tmp_path, capsys):
    out = tmp_path / "eval_flac.h5"
    staging = tmp_path / f".{out.name}.parts"
    code = (
        "import pack_faults; pack_faults.pack_with(pack_faults.SlowRow, "
        f"{str(panns)!r}, {str(out)!r}, 'flac', progress=False, part_clips=1)"
    )
    first = subprocess.Popen([sys.executable, "-c", code], env=_env())
    try:
        deadline = time.monotonic() + 120
        while not list(staging.glob("part-*.npz")) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None and list(staging.glob("part-*.npz")), "the first pack did not start"
        started = time.monotonic()
        with pytest.raises(OSError, match="another pack") as info:
            pack_panns(panns, out, "flac", progress=False, part_clips=1, overwrite=True)
        assert time.monotonic() - started < 10  # at once, not after the first one ends
        assert str(out) in str(info.value) and f"process {first.pid}" in str(info.value)
        assert cli.main(["pack", "--from", str(panns), str(out), "--codec", "flac", "--no-progress"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "another pack" in err and str(out) in err
        assert first.poll() is None  # the first pack goes on undisturbed
    finally:
        first.kill()
        first.wait(30)
    report = pack_panns(panns, out, "flac", progress=False, part_clips=1)  # the lock died with it
    assert report.resumed_parts >= 1 and report.packed == 12
    assert _everything(out)["waveform"].equal(_everything(panns)["waveform"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no lock file, no parts left


def test_part_files_are_written_under_names_of_this_process(panns, tmp_path, monkeypatch):
    """Temporary names carry the pid: even two writers without the lock never share one."""
    replaced = []
    real_replace = os.replace

    def recording_replace(src, dst):
        if Path(dst).parent.name == ".out.h5.parts":
            replaced.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(pack_parts.os, "replace", recording_replace)
    pack_panns(panns, tmp_path / "out.h5", "flac", progress=False, part_clips=5)
    assert len(replaced) == 4  # plan.json and three parts
    assert all(f".{os.getpid()}." in name and name.endswith(".tmp") for name in replaced), replaced


def test_an_output_inside_the_audio_folder_does_not_report_its_own_files(tmp_path):
    import numpy as np
    import soundfile as sf

    from dcls_audio.data.pack import pack_folder

    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "abc.wav", np.zeros(16000, np.float32), 16000)
    labels = tmp_path / "segments.csv"
    labels.write_text('abc, 0, 10, "/m/09x0r"\n')
    (audio / ".out.h5.parts").mkdir()  # an earlier pack's parts, and its lock, in AUDIO_DIR
    (audio / ".out.h5.parts" / "plan.json").write_text("{}")
    report = pack_folder(audio, labels, audio / "out.h5", progress=False)
    assert report.packed == 1 and report.not_audio == []


def test_the_next_run_removes_what_a_pack_killed_while_assembling_left(panns, tmp_path):
    out = tmp_path / "eval_flac.h5"
    code = f"import pack_faults; pack_faults.pack_killed_while_assembling({str(panns)!r}, {str(out)!r}, 'flac')"
    killed = subprocess.run([sys.executable, "-c", code], env=_env(), timeout=300)
    assert killed.returncode == -9 and not out.exists()
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].stat().st_size > 100_000  # the whole output under a temporary name
    staging = tmp_path / f".{out.name}.parts"
    (staging / f"part-000000.npz.{2**22 + 1}.tmp").write_bytes(b"half a part")  # a killed worker's
    report = pack_panns(panns, out, "flac", progress=False)
    assert report.resumed_parts == 1  # the parts were complete: only assembled again
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert _everything(out)["waveform"].equal(_everything(panns)["waveform"])
    assert any("removed 2 temporary files" in note for note in report.notes), report.notes


def test_stale_shard_staging_folders_are_removed_too(panns, tmp_path):
    pytest.importorskip("litdata", reason="the shards extra (litdata) is not installed")
    out = tmp_path / "shards"
    stale = tmp_path / ".shards.pack-abc123.tmp"  # as write_shards names its staging folder
    (stale / "sub").mkdir(parents=True)
    (stale / "chunk-0-0.bin").write_bytes(bytes(1000))
    report = pack_panns(panns, out, "flac", progress=False, shards=True)
    assert report.packed == 12 and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def _in_a_thread(function, timeout: float):
    """``function()``'s (result, exception), or a failure if it has not returned in ``timeout`` s."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = function()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"no return within {timeout} s: the pack hangs"
    return outcome.get("result"), outcome.get("error")


def test_a_killed_worker_stops_the_pack_naming_its_part_and_the_same_command_resumes(panns, tmp_path):
    """A worker SIGKILLed (as by the out-of-memory killer) while it encodes part 3 (rows 7 and 8:
    row 5 is left out): the pack returns with an error the CLI prints on one line, keeps the
    parts done, and the same command resumes to a correct file."""
    out = tmp_path / "eval_flac.h5"
    staging = tmp_path / f".{out.name}.parts"
    args = (panns, out, "flac")
    kwargs = dict(progress=False, part_clips=2, num_workers=2)
    _, error = _in_a_thread(lambda: pack_faults.pack_with(pack_faults.KillingRow, *args, **kwargs), timeout=120)
    assert isinstance(error, OSError), repr(error)  # the CLI prints OSError on one line, no traceback
    message = str(error)
    assert "\n" not in message and "worker process" in message, message
    assert "part 3 " in message and f"{panns}:7" in message, message
    assert "run the same command again" in message
    assert not out.exists() and not list(staging.glob("*.tmp"))
    done = len(list(staging.glob("part-*.npz")))
    assert 2 <= done < 6
    report = pack_panns(*args, **kwargs)
    assert report.resumed_parts == done and report.packed == 12
    assert _everything(out)["waveform"].equal(_everything(panns)["waveform"])


def test_ctrl_c_stops_the_workers_at_once_and_they_leave_no_temporary_file(panns, tmp_path):
    """Ctrl-C does not wait for the parts in progress (a part of 12 slow rows takes 6 s here)."""
    out = tmp_path / "eval_flac.h5"
    staging = tmp_path / f".{out.name}.parts"
    code = (
        "import pack_faults; pack_faults.pack_with(pack_faults.SlowRow, "
        f"{str(panns)!r}, {str(out)!r}, 'flac', progress=False, part_clips=12, num_workers=2)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(staging.glob("part-*.tmp")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert list(staging.glob("part-*.tmp")), "no worker started a part"
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - sent < 4.0, "Ctrl-C waited for the part in progress"
    finally:
        proc.kill()
        proc.wait(10)
    assert "KeyboardInterrupt" in err and not out.exists()
    assert list(staging.iterdir()) == [staging / "plan.json"]  # nothing half-written left
