"""Outputs under attack: an output that is an input (also through a symlink or hard link), an
existing file not meant to be replaced, a full disk (injected, and a real tiny tmpfs where the
test may mount one), Ctrl-C while writing. Nothing is lost and no temporary file is left."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from dcls_audio.outputs import OutputError, atomic_output, atomic_output_set, check_output_path


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- the guard
def test_an_output_is_never_an_input(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    link = tmp_path / "link.onnx"
    link.symlink_to(ckpt)
    hard = tmp_path / "hard.onnx"
    os.link(ckpt, hard)
    for output in (ckpt, tmp_path / "." / "model.ckpt", link, hard):
        for overwrite in (False, True):
            with pytest.raises(OutputError, match=r"--output: .* is also an input .*model\.ckpt"):
                check_output_path(output, [ckpt], overwrite=overwrite, what="--output")
    # and the other way round: the input given through a link
    with pytest.raises(OutputError, match="is also an input"):
        check_output_path(ckpt, [link], overwrite=True)
    assert ckpt.read_bytes() == b"weights"


def test_an_existing_file_is_replaced_only_with_overwrite(tmp_path):
    victim = tmp_path / "victim.wav"
    victim.write_bytes(b"RIFF audio")
    with pytest.raises(OutputError, match=r"victim\.wav already exists; pass --overwrite"):
        check_output_path(victim, [tmp_path / "model.ckpt"])
    assert check_output_path(victim, [tmp_path / "model.ckpt"], overwrite=True) == victim
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="already exists"):
        check_output_path(dangling, [])
    with pytest.raises(OutputError, match="is a folder"):
        check_output_path(tmp_path, [], overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "x.onnx", [])
    assert check_output_path(tmp_path / "new.onnx", [victim]) == tmp_path / "new.onnx"


# ----------------------------------------------------------------------------- writers, injected faults
def test_full_disk_while_writing_names_the_path_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")

    def full_disk(path: Path) -> None:
        with open(path, "w") as fh:
            fh.write("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError) as info:
        with atomic_output(target) as tmp:
            full_disk(tmp)
    message = str(info.value)
    assert str(target) in message and "No space left on device" in message and "nothing was lost" in message
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert _listing(tmp_path) == {"out.csv": b"old\n"}


def test_torch_zip_writer_failure_is_reported_as_a_write_error(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"

    def failing_save(obj, f, *args, **kwargs):  # what torch.save raises when the disk fills
        Path(f).write_bytes(b"PK partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:820] . PytorchStreamWriter failed writing file "
            "data/3: file write failed"
        )

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OutputError, match=r"cannot write .*last\.ckpt: .*nothing was lost \(no file was written\)"):
        with atomic_output(target) as tmp:
            torch.save({"a": 1}, tmp)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_writing_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old model")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half a new")
            raise KeyboardInterrupt
    assert _listing(tmp_path) == {"model.onnx": b"old model"}


def test_a_set_of_files_is_replaced_together_or_not_at_all(tmp_path):
    names = ("metrics.json", "per_class.csv", "predictions.npz")
    (tmp_path / "notes.txt").write_text("mine")
    for name in names:
        (tmp_path / name).write_text(f"old {name}")
    before = _listing(tmp_path)
    for fault in (OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()):
        with pytest.raises(type(fault)):
            with atomic_output_set(tmp_path, names) as tmp:
                tmp["metrics.json"].write_text("new")
                tmp["per_class.csv"].write_text("new")
                raise fault
        assert _listing(tmp_path) == before  # old set whole, no hidden staging folder
    with atomic_output_set(tmp_path, names) as tmp:
        for name in names:
            tmp[name].write_text(f"new {name}")
    after = _listing(tmp_path)
    assert after == {**before, **{n: f"new {n}".encode() for n in names}}


def test_read_only_folder_is_one_clear_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the tmpfs test covers a refusing file system")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match=r"cannot write .*ro/x\.pt: Permission denied; nothing was lost"):
            with atomic_output(folder / "x.pt") as tmp:
                tmp.write_bytes(b"x")
    finally:
        folder.chmod(0o700)


# ----------------------------------------------------------------------------- a real full file system
@contextlib.contextmanager
def _tiny_tmpfs(path: Path, size: str = "256k"):
    path.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def test_real_full_tmpfs_checkpoint_save(tmp_path):
    with _tiny_tmpfs(tmp_path / "mnt") as mnt:
        target = mnt / "last.ckpt"
        with atomic_output(target) as tmp:
            torch.save({"w": torch.zeros(1000)}, tmp)  # ~4 kB: fits
        before = target.read_bytes()
        with pytest.raises(OutputError) as info:
            with atomic_output(target) as tmp:
                torch.save({"w": torch.zeros(400_000)}, tmp)  # 1.6 MB into 256 kB
        message = str(info.value)
        assert str(target) in message and "nothing was lost" in message, message
        assert "No space left on device" in message or "disk full" in message, message
        assert [p.name for p in mnt.iterdir()] == ["last.ckpt"] and target.read_bytes() == before
        assert torch.load(target)["w"].shape == (1000,)


def test_devices_pipes_and_unwritable_folders_are_refused_before_any_work(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        check_output_path(fifo, overwrite=True)
    assert fifo.exists() and not fifo.is_file()
    with pytest.raises(OutputError, match="not a regular file"):
        check_output_path("/dev/null", overwrite=True)
    with pytest.raises(OutputError, match="cannot write to /proc"):
        check_output_path("/proc/tags.json")  # a folder no file can be created in, even as root
    assert not list(tmp_path.glob(".*probe"))
