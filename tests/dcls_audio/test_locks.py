"""`dcls_audio.locks.FileLock`: one holder at a time, its pid named, the file removed on request."""

from __future__ import annotations

import os

from dcls_audio import locks
from dcls_audio.locks import FileLock


def test_one_holder_at_a_time_and_the_holder_is_named(tmp_path):
    first, second = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
    assert first.acquire() and first.held
    assert not second.acquire() and not second.held  # another open lock, even in this process
    assert second.holder() == f"process {os.getpid()}"
    first.release()
    assert second.acquire()
    second.release()
    assert (tmp_path / "x.lock").exists()  # kept by default


def test_remove_deletes_the_file_and_a_late_opener_locks_the_new_one(tmp_path, monkeypatch):
    """A process that opened the file just before the holder removed it must not lock the
    removed file (it would hold a lock nobody else sees): it opens the new one."""
    path = tmp_path / "x.lock"
    holder = FileLock(path, remove=True)
    assert holder.acquire()
    real_flock = locks.fcntl.flock
    calls = []

    def flock_after_the_release(fd, operation):
        calls.append(fd)
        if len(calls) == 1:  # between this process's open and its flock, the holder lets go
            holder.release()
        return real_flock(fd, operation)

    late = FileLock(path, remove=True)
    monkeypatch.setattr(locks.fcntl, "flock", flock_after_the_release)
    assert late.acquire() and len(calls) == 2  # the removed file, then the new one
    monkeypatch.setattr(locks.fcntl, "flock", real_flock)
    assert path.exists() and not FileLock(path).acquire()  # the file of that name is the locked one
    late.release()
    assert not path.exists()
    assert FileLock(tmp_path / "missing.lock").holder() == "another process"
