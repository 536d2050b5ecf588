"""Run directories: which ``version_N`` a run writes into, and one owner per directory.

A run lives in ``<output_dir>/<name>/version_N/``. While a run trains, its process holds an
exclusive ``fcntl.flock`` on ``version_N/.lock`` (released by the kernel however the process
ends, SIGKILL included), so two ``dcls-audio train`` processes never share a directory. The
choice of the directory is made under a second lock, ``<output_dir>/<name>/.lock``, held for a
moment: two runs started at the same time never pick the same new version.

The choice (:func:`resolve_run_dir`):

- ``resume=CKPT`` that is the ``checkpoints/last.ckpt`` of a run directory of this name
  (``<output_dir>/<name>/version_N``): that run continues in its directory; if another process
  holds it, :class:`RunDirInUse` (a clear error). Any other checkpoint (a ``best-*.ckpt``, a
  copy of an older ``last.ckpt``, another name's or a foreign file) starts a new version, so a
  later ``last.ckpt`` of that run is never overwritten.
- otherwise, with ``auto_resume``, the newest version without a ``finished`` marker continues
  from its ``last.ckpt`` unless another process holds it; else a new version.

Processes of one multi-process run agree on rank 0's choice: ranks that Lightning launches
itself inherit it in :data:`RUN_DIR_ENV` / :data:`RESUME_ENV`; ranks started by torchrun
(``RANK``, ``WORLD_SIZE``) read it from torchrun's job store (the agent's TCP store, which
lives as long as the job: a key per restart, never another job's), and ranks started by SLURM
(``SLURM_PROCID``, ``SLURM_NTASKS``) or a launcher without such a store from a hand-off file
that rank 0 writes into ``<output_dir>/<name>/`` (named after the job), waiting up to
:data:`RANK_WAIT_ENV` seconds (default 600) for it. Only rank 0 locks the directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..locks import FileLock
from ..outputs import atomic_output

__all__ = [
    "FINISHED_MARKER",
    "LAST_CHECKPOINT",
    "RESUME_ENV",
    "RUN_DIR_ENV",
    "RunClaim",
    "RunDirInUse",
    "claim_run_dir",
    "remove_stale_temporaries",
    "resolve_run_dir",
]

RUN_DIR_ENV = "DCLS_AUDIO_RUN_DIR"  # rank 0's run directory, for the ranks Lightning launches
RESUME_ENV = "DCLS_AUDIO_RESUME_FROM"  # rank 0's checkpoint to resume from ("" for none)
RANK_WAIT_ENV = "DCLS_AUDIO_RANK_WAIT_S"
FINISHED_MARKER = "finished"
LAST_CHECKPOINT = "last.ckpt"
LOCK_FILE = ".lock"
_IMPORTED_AT = time.time()
#: a hand-off file older than this before this process started belongs to an earlier job
_HANDOFF_SLACK_S = 60.0


class RunDirInUse(OSError):
    """The run directory asked for is being written by another live process."""


@dataclass
class RunClaim:
    """The chosen run directory, the checkpoint to resume from, and the lock held on it."""

    run_dir: Path
    resume_from: Path | None
    lock: RunDirLock | None = None
    note: str | None = None  # why this directory (another run held the one that would have been used)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


# ----------------------------------------------------------------------------- locks
class RunDirLock(FileLock):
    """An exclusive, non-blocking ``flock`` on ``<run_dir>/.lock`` (holder's pid written in it;
    :class:`~dcls_audio.locks.FileLock`, the file kept)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(Path(run_dir) / LOCK_FILE)


def _holder(run_dir: Path) -> str:
    return RunDirLock(run_dir).holder()


def in_use(run_dir: Path) -> bool:
    """Whether another open lock holds ``run_dir`` (this process's own locks count too)."""
    if not (run_dir / LOCK_FILE).exists():
        return False
    lock = RunDirLock(run_dir)
    if lock.acquire():
        lock.release()
        return False
    return True


@contextlib.contextmanager
def _choosing(root: Path) -> Iterator[None]:
    """Serialises the choice of a version among processes (held for a moment)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the choice
def _versions(root: Path) -> list[Path]:
    found = [p for p in root.glob("version_*") if p.is_dir() and p.name[8:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[8:]))


def _new_version(root: Path) -> Path:
    versions = _versions(root) if root.is_dir() else []
    number = int(versions[-1].name[8:]) + 1 if versions else 0
    return root / f"version_{number}"


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _run_of(ckpt: Path) -> Path | None:
    """The run directory whose ``last.ckpt`` ``ckpt`` is, else None."""
    run_dir = ckpt.parent.parent
    if ckpt.name == LAST_CHECKPOINT and ckpt.parent.name == "checkpoints" and (run_dir / "config.yaml").is_file():
        return run_dir
    return None


def resolve_run_dir(
    output_dir: str | Path,
    name: str,
    auto_resume: bool,
    resume: str | Path | None,
    busy: Callable[[Path], bool] = lambda run_dir: False,
) -> tuple[Path, Path | None]:
    """Pick the run directory and the checkpoint to resume from (see the module docstring).

    ``busy(run_dir)``: whether another process holds that directory. Returns
    ``(run_dir, checkpoint or None)``; the directory of a new version does not exist yet.
    Raises FileNotFoundError for a missing ``resume`` and :class:`RunDirInUse` when ``resume``
    is the ``last.ckpt`` of a run another process is training.
    """
    root = Path(output_dir) / name
    if resume is not None:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: checkpoint not found: {ckpt}")
        run_dir = _run_of(ckpt)
        if run_dir is not None and _same(run_dir.parent, root):
            if busy(run_dir):
                raise RunDirInUse(
                    errno.EBUSY,
                    f"--resume: run {run_dir} is being trained by {_holder(run_dir)}; "
                    "wait for it to end, or resume from a copy of the checkpoint (a new version)",
                    str(run_dir),
                )
            return run_dir, ckpt
        return _new_version(root), ckpt
    versions = _versions(root) if root.is_dir() else []
    if auto_resume and versions and not (versions[-1] / FINISHED_MARKER).exists() and not busy(versions[-1]):
        run_dir = versions[-1]
        last = run_dir / "checkpoints" / LAST_CHECKPOINT
        return run_dir, (last if last.is_file() else None)
    return _new_version(root), None


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what a killed run left half-written in ``run_dir`` (its owner must hold the lock):
    checkpoint temporaries ``checkpoints/.<name>.ckpt.*.tmp`` and write-test files. Returns them."""
    patterns = [("checkpoints", ".*.ckpt.*.tmp"), (".", ".write-test-*")]
    removed = []
    for folder, pattern in patterns:
        for path in (run_dir / folder).glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


# ----------------------------------------------------------------------------- launchers
def launcher_rank() -> tuple[int, int, str] | None:
    """``(rank, world size, job key)`` of a process started by torchrun or SLURM as one rank of
    several; None otherwise (a single process, or Lightning launches the ranks itself)."""
    env = os.environ
    if "RANK" in env and int(env.get("WORLD_SIZE", "1") or 1) > 1:
        key = "-".join(env.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))
        return int(env["RANK"]), int(env["WORLD_SIZE"]), f"torchrun-{key}"
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        key = f"{env.get('SLURM_JOB_ID', '')}-{env.get('SLURM_STEP_ID', '')}"
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), f"slurm-{key}"
    return None


def _job_store(timeout_s: float):
    """A client of torchrun's job store (hosted by its agent for the job's life), or None when
    this process was not started by torchrun with one."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not env.get("MASTER_ADDR") or not env.get("MASTER_PORT"):
        return None
    from datetime import timedelta

    import torch.distributed as dist

    return dist.TCPStore(
        env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=timeout_s)
    )


#: claims made by this process under a launcher: every rank makes them in the same order, so
#: the n-th claim of rank 0 is the n-th of each rank (a script that trains twice in one job)
_claims = 0


def _store_key(name: str) -> str:
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"dcls_audio/run_dir/{name}/restart-{restart}/claim-{_claims}"


def _handoff_path(root: Path, key: str) -> Path:
    return root / f".rank0-{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.json"


def _claim_from_json(text: str | bytes) -> RunClaim:
    chosen = json.loads(text)
    resume = chosen.get("resume_from")
    return RunClaim(Path(chosen["run_dir"]), Path(resume) if resume else None)


def _claim_json(claim: RunClaim) -> str:
    return json.dumps({"run_dir": str(claim.run_dir), "resume_from": str(claim.resume_from or "") or None})


def _read_handoff(root: Path, key: str) -> RunClaim:
    limit = float(os.environ.get(RANK_WAIT_ENV, "600"))
    store = _job_store(limit)
    if store is not None:
        try:
            return _claim_from_json(store.get(_store_key(root.name)))
        except RuntimeError as err:  # the store's timeout (DistStoreError)
            raise TimeoutError(
                f"rank 0 did not name the run directory in torchrun's job store within {limit:g} s "
                f"(set {RANK_WAIT_ENV} to wait longer): {err}"
            ) from None
    path = _handoff_path(root, key)
    deadline = time.monotonic() + limit
    while True:
        try:
            if path.stat().st_mtime >= _IMPORTED_AT - _HANDOFF_SLACK_S:
                return _claim_from_json(path.read_text())
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"rank 0 did not name the run directory in {path} within {limit:g} s "
                f"(set {RANK_WAIT_ENV} to wait longer; {root} must be on a file system all ranks share)"
            )
        time.sleep(0.2)


def _write_handoff(root: Path, key: str, claim: RunClaim) -> None:
    store = _job_store(float(os.environ.get(RANK_WAIT_ENV, "600")))
    if store is not None:
        store.set(_store_key(root.name), _claim_json(claim))
        return
    with atomic_output(_handoff_path(root, key)) as tmp:
        tmp.write_text(_claim_json(claim))


# ----------------------------------------------------------------------------- claim
def claim_run_dir(output_dir: str | Path, name: str, auto_resume: bool, resume: str | Path | None) -> RunClaim:
    """Choose the run directory (:func:`resolve_run_dir`), create it and lock it for this process.

    A rank other than 0 of a multi-process run takes rank 0's choice (inherited or handed off)
    and locks nothing. Rank 0 under torchrun/SLURM writes the hand-off file (removed by
    :func:`release_claim`).
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        resume_env = os.environ.get(RESUME_ENV) or None
        return RunClaim(Path(inherited), Path(resume_env) if resume_env else None)
    root = Path(output_dir) / name
    launched = launcher_rank()
    if launched is not None:
        global _claims
        _claims += 1
    if launched is not None and launched[0] != 0:
        return _read_handoff(root, launched[2])
    with _choosing(root):
        wanted, _ = resolve_run_dir(output_dir, name, auto_resume, resume)
        run_dir, resume_from = resolve_run_dir(output_dir, name, auto_resume, resume, busy=in_use)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunDirLock(run_dir)
        if not lock.acquire():  # cannot happen while every run chooses under _choosing
            raise RunDirInUse(errno.EBUSY, f"run {run_dir} is in use by {_holder(run_dir)}", str(run_dir))
    note = None
    if wanted != run_dir and wanted.exists():
        note = f"{wanted} is being trained by {_holder(wanted)}: this run uses {run_dir}"
    elif resume is not None and _run_of(Path(resume)) is not None and not _same(Path(resume).parent.parent, run_dir):
        note = f"the checkpoint is not the last.ckpt of a run named {name!r}: continuing it in a new version"
    elif resume is not None and _run_of(Path(resume)) is None:
        note = "the checkpoint is not a run's last.ckpt: continuing it in a new version"
    claim = RunClaim(run_dir, resume_from, lock, note)
    remove_stale_temporaries(run_dir)
    if launched is not None:
        _write_handoff(root, launched[2], claim)
    return claim


def release_claim(claim: RunClaim, output_dir: str | Path, name: str) -> None:
    """Unlock the run directory and remove rank 0's hand-off file (the other ranks have read it
    before the process group formed)."""
    launched = launcher_rank()
    if claim.lock is not None and launched is not None:
        with contextlib.suppress(OSError):
            _handoff_path(Path(output_dir) / name, launched[2]).unlink()
        with contextlib.suppress(Exception):  # the job's store may be gone with the job
            store = _job_store(10.0)
            if store is not None:
                store.delete_key(_store_key(name))
    claim.release()
