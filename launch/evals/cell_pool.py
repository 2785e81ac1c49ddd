"""Run a suite's independent training runs ("cells") in worker processes.

A sweep such as ``mqar-sweep`` trains every model at every learning rate and
point from scratch: each cell seeds its own model and data, shares nothing with
the others, and sets its own thread count. On a node with many cores the cells
are therefore run side by side, one process per cell, each with ``threads``
intra-op threads, and their rows come back in the order the cells were given,
so the result is the one a single process would write (same seeds, same
single-threaded kernels: equal accuracies and curves; only ``seconds``
differ).

Processes, not threads: a training step holds the GIL between its small
operators, and two OpenMP pools in one process oversubscribe the cores. The
``spawn`` start method gives each worker a fresh interpreter, since a forked
child of a process that already ran torch's thread pools can deadlock.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

log = logging.getLogger("obs.eval")


def _start_worker(threads: int) -> None:
    """Each worker: its own thread count before any work, and the parent's log format.

    ``torch.set_num_threads`` and not ``OMP_NUM_THREADS``: torch is already loaded
    when the initializer runs, so the variable would no longer size its pool.
    """
    torch.set_num_threads(threads)
    from launch.runner import setup_logging

    setup_logging()


def check_workers(workers: int, threads: int) -> None:
    """Refuse a worker count below 1; warn when workers × threads exceeds the cores.

    Raises:
        ValueError: ``workers`` < 1.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cpus = os.cpu_count() or 1
    if workers * threads > cpus:
        log.warning("workers (%d) x threads (%d) = %d exceeds the %d CPUs: runs will "
                    "share cores and their seconds will not be comparable",
                    workers, threads, workers * threads, cpus)


def run_cells(fn: Callable[..., dict[str, Any]], cells: Sequence[tuple[Any, ...]],
              workers: int, threads: int) -> list[dict[str, Any]]:
    """``[fn(*cell) for cell in cells]``, in ``workers`` processes when ``workers`` > 1.

    Args:
        fn: a module-level function (it is pickled by reference) returning one row.
        cells: the arguments of each call; they must pickle (config dataclasses do).
        workers: processes at once (1: in this process, one cell after another).
        threads: intra-op threads of each worker.

    Returns:
        The rows, in the order of ``cells``.

    Raises:
        ValueError: ``workers`` < 1.
        Exception: the first failing cell's exception (in ``cells`` order),
            re-raised here once the cells already running have finished; cells
            not yet started are cancelled.
    """
    check_workers(workers, threads)
    if workers == 1 or len(cells) <= 1:
        return [fn(*cell) for cell in cells]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(cells)), mp_context=context,
                             initializer=_start_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *cell) for cell in cells]
        try:
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
