"""`dcls-audio pack` when things go wrong around it: two packs of one OUTPUT, a worker killed,
a pack killed while it assembles the output, source files the system cannot read for a moment."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dcls_audio import cli
from dcls_audio.data import AudioSetHDF5, pack_parts
from dcls_audio.data import pack as pack_module
from dcls_audio.data.pack import pack_folder, pack_panns
from dcls_audio.data.read_retry import RETRY_DELAYS_S

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


@pytest.fixture()
def three_files(tmp_path):
    """An audio folder of three labelled WAV files, and its segments CSV."""
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, name in enumerate(("aaa", "bbb", "ccc")):
        sf.write(audio / f"{name}.wav", 0.1 * (i + 1) * np.ones(8000, np.float32), 16000)
    labels = tmp_path / "segments.csv"
    labels.write_text("".join(f'{name}, 0, 10, "/m/09x0r"\n' for name in ("aaa", "bbb", "ccc")))
    return audio, labels


def _flaky_decode(monkeypatch, failures: int, code: int) -> list:
    """``decode_clip`` failing with OSError ``code`` ``failures`` times for bbb.wav (the system:
    too many open files, a disk error), then reading it; returns the list of its calls."""
    calls = []
    real = pack_module.decode_clip

    def decode(path, *args):
        if path.name == "bbb.wav":
            calls.append(path)
            if len(calls) <= failures:
                raise OSError(code, os.strerror(code), str(path))
        return real(path, *args)

    monkeypatch.setattr(pack_module, "decode_clip", decode)
    return calls


def test_a_clip_the_system_could_not_read_for_a_moment_is_read_again_and_packed(three_files, tmp_path, monkeypatch):
    audio, labels = three_files
    calls = _flaky_decode(monkeypatch, failures=2, code=errno.EMFILE)
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    report = pack_folder(audio, labels, tmp_path / "out.h5", progress=False)
    assert report.packed == 3 and report.unreadable == []
    assert len(calls) == 3 and len(waits) == 2 and 0 < waits[0] < waits[1]  # two waits, growing
    assert sorted(AudioSetHDF5(tmp_path / "out.h5")[i]["audio_name"] for i in range(3)) == ["aaa", "bbb", "ccc"]


def test_a_lasting_system_error_stops_the_pack_naming_the_file_and_a_rerun_resumes(
    three_files, tmp_path, monkeypatch, capsys
):
    """The clip is not bad: it must not be skipped silently; the pack stops and says so."""
    audio, labels = three_files
    out = tmp_path / "out.h5"
    calls = _flaky_decode(monkeypatch, failures=100, code=errno.EIO)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    assert cli.main(["pack", str(audio), str(labels), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(audio / "bbb.wav") in err and "Input/output error" in err
    calls.clear()
    with pytest.raises(OSError, match="Input/output error") as info:
        pack_folder(audio, labels, out, progress=False, part_clips=1)
    message = str(info.value)
    assert str(audio / "bbb.wav") in message and "run the same command again" in message
    assert len(calls) == len(RETRY_DELAYS_S) + 1 and not out.exists()  # read again before giving up
    monkeypatch.undo()
    report = pack_folder(audio, labels, out, progress=False, part_clips=1)  # the disk is back
    assert report.resumed_parts == 1 and report.packed == 3 and report.unreadable == []


def test_a_lasting_system_error_in_a_worker_stops_the_pack_naming_the_row(panns, tmp_path):
    out = tmp_path / "eval_flac.h5"
    kwargs = dict(progress=False, part_clips=2, num_workers=2)
    _, error = _in_a_thread(lambda: pack_faults.pack_with(pack_faults.FailingRow, panns, out, "flac", **kwargs), 120)
    assert isinstance(error, OSError) and f"{panns}:7" in str(error) and "Input/output error" in str(error)
    assert f"after {len(RETRY_DELAYS_S) + 1} attempts" in str(error)  # read again in the worker
    assert not out.exists()
    report = pack_panns(panns, out, "flac", **kwargs)
    assert report.packed == 12 and report.resumed_parts >= 2


def test_undecodable_files_are_still_reported_and_skipped_without_retries(three_files, tmp_path, monkeypatch):
    audio, labels = three_files
    (audio / "bbb.wav").write_bytes(b"RIFF" + bytes(60))
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    report = pack_folder(audio, labels, tmp_path / "out.h5", progress=False)
    assert report.packed == 2 and [p.name for p, _ in report.unreadable] == ["bbb.wav"] and waits == []


_EXHAUSTED = """
import os, resource, sys
from pathlib import Path
import av  # imported before the descriptors run out
from dcls_audio.data import audio_decode
from dcls_audio.data.pack import _FileClip
from dcls_audio.data.read_retry import transient_errno
if sys.argv[2] == "libsndfile-only":  # FFmpeg fails as for a file it cannot parse
    class Unparsable(audio_decode.AudioSource):
        def __init__(self, path):
            raise audio_decode.AudioReadError(path, "Invalid data found when processing input")
    audio_decode.PyAVSource = Unparsable
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    _FileClip(32000)(sys.argv[1])
    found = "read"
except Exception as exc:
    found = transient_errno(exc)
for fd in held:
    os.close(fd)
print(found)
"""


@pytest.mark.parametrize("decoders", ["both", "libsndfile-only"])
def test_running_out_of_file_descriptors_is_seen_as_transient_through_the_real_decoders(three_files, decoders):
    """Real libsndfile and FFmpeg errors with every descriptor in use: the errno is found (from
    PyAV's error, or by reading the file when libsndfile only says "System error")."""
    audio, _ = three_files
    done = subprocess.run(
        [sys.executable, "-c", _EXHAUSTED, str(audio / "aaa.wav"), decoders],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(errno.EMFILE)


def test_transient_errors_are_found_in_the_cause_chain_and_h5py_messages():
    from dcls_audio.data.audio_decode import AudioReadError
    from dcls_audio.data.read_retry import SourceReadError, transient_errno

    try:
        try:
            raise OSError(errno.ENFILE, "Too many open files in system")
        except OSError as cause:
            raise AudioReadError("x.wav", "Too many open files in system") from cause
    except AudioReadError as exc:
        assert transient_errno(exc) == errno.ENFILE
    h5py_style = OSError("Can't read data (file read failed: time = x, errno = 5, error message = 'I/O error')")
    assert transient_errno(h5py_style) == errno.EIO
    assert transient_errno(OSError(errno.ENOENT, "No such file")) is None
    assert transient_errno(AudioReadError("x.wav", "truncated")) is None
    err = SourceReadError("a.wav", errno.EIO, 4, 7.5)
    again = pickle.loads(pickle.dumps(err))  # crosses worker processes
    assert type(again) is SourceReadError and str(again) == str(err) and again.errno == errno.EIO
