"""Pack's worker processes: jobs run by a ``concurrent.futures.ProcessPoolExecutor`` (spawn).

:func:`map_unordered` hands the jobs to the pool a few at a time (twice as many as there are
workers, so a stop cancels little) and yields the results as they come. A worker that dies
(SIGKILL, the out-of-memory killer, a crash in native code) breaks the pool: every job not yet
done fails with ``BrokenProcessPool`` at once, where ``multiprocessing.Pool`` would replace the
worker and wait forever for its job. :func:`map_unordered` then stops the pool and raises that
``BrokenProcessPool``; the caller says what was lost (:class:`WorkerDied`).

On any way out before the end (that, a job's own error, Ctrl-C, the caller closing the
generator) the jobs not started are cancelled and the workers are terminated (SIGTERM) and
joined before the exception goes on, so the caller sees the files the workers left as final.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

__all__ = ["WorkerDied", "map_unordered"]

J = TypeVar("J")
R = TypeVar("R")


class WorkerDied(OSError):
    """A worker process ended abruptly; ``str()`` is the whole message (what was lost, what to do)."""


def _stop(executor: ProcessPoolExecutor, before: set) -> None:
    """Terminate this pool's workers (the children started since ``before``) and wait for them."""
    for child in set(multiprocessing.active_children()) - before:
        child.terminate()
    executor.shutdown(wait=True, cancel_futures=True)


def map_unordered(
    function: Callable[[J], R],
    jobs: Iterable[J],
    num_workers: int,
    initializer: Callable[[], Any] | None = None,
) -> Iterator[R]:
    """``function(job)`` for every job in ``num_workers`` spawned processes (each started with
    ``initializer``); yields the results in the order they finish. Raises the first job's
    exception, or ``BrokenProcessPool`` when a worker died, once the pool is stopped."""
    before = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer
    )
    pending = iter(jobs)
    try:
        running: set[Future] = {executor.submit(function, job) for job in itertools.islice(pending, 2 * num_workers)}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                for job in itertools.islice(pending, 1):  # keep the workers busy while the caller works
                    running.add(executor.submit(function, job))
                yield result
    except BaseException:
        _stop(executor, before)
        raise
    executor.shutdown(wait=True)
