"""The passes of a streamed spectrum on ``dask.distributed`` workers.

A pass over J's rows is a set of independent tasks, one per range of samples. With a
``dask.distributed`` client active (a local cluster, or one on SLURM through dask-jobqueue,
docs/cluster.md) the tasks run on its workers and their results come back as they finish; the
row operator (:mod:`.operator`) runs them here otherwise.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ..common.logs import logger
from ..jacobian.compute import batch_slices


@functools.lru_cache(maxsize=1)
def _unpickled(blob: bytes) -> torch.nn.Module:
    """The pass's model on a worker, unpickled once for all its tasks."""
    return pickle.loads(blob)


def _on_worker(fn, blob: bytes, *args):
    return fn(_unpickled(blob), *args)


def active_client():
    """The active ``dask.distributed`` client, or None (the passes then run here)."""
    try:
        from dask.distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def worker_tasks(
    client,
    fn: Callable,
    model: torch.nn.Module,
    x: torch.Tensor,
    M: np.ndarray,
    k: int,
    batch_size: int,
    split_rows: bool,
) -> Iterator[tuple[slice, object]]:
    """Yield (a task's rows of J, fn(model, x of the task, M or its rows, batch_size)) for each
    task of one pass on ``client``'s workers. The samples are cut into about four tasks per
    worker; the model and M go to the workers once per pass (scattered), and results are taken
    as they finish, so the driver holds one beside the sum. torch.func transforms keep
    process-global state, so two tasks never share a process at once (workers: one thread each)."""
    from dask.distributed import as_completed

    n = len(x)
    workers = max(1, len(client.scheduler_info()["workers"]))
    tasks = batch_slices(n, max(1, -(-n // (4 * workers))))
    # the model as pickled bytes: dask's own torch serialisation loses the modules' hook dicts
    # hash=False: a fresh key per pass, so that releasing the last pass's copy cannot race with this one
    model_f = client.scatter(pickle.dumps(model), broadcast=True, hash=False)
    M_f = None if split_rows else client.scatter(M, broadcast=True, hash=False)
    futures = {}
    for t in tasks:
        rows = slice(t.start * k, t.stop * k)
        arg = M[rows] if split_rows else M_f
        futures[client.submit(_on_worker, fn, model_f, x[t], arg, batch_size, pure=False)] = rows
    for fut in as_completed(futures):
        yield futures[fut], fut.result()
        fut.release()


@contextmanager
def dask_workers(scheduler: str | None) -> Iterator[object | None]:
    """A dask.distributed client for the passes while the block is open (``spectrum.scheduler``):
    None = no client (the blocks run here), ``local:N`` = N local worker processes of one thread
    each, anything else = the address of a running scheduler (a cluster's, e.g. dask-jobqueue's)."""
    if not scheduler:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    if scheduler.startswith("local:"):
        n = int(scheduler.split(":", 1)[1])
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with Client(cluster) as client:
                logger.info("passes on %d local worker processes", n)
                yield client
    else:
        with Client(scheduler) as client:
            logger.info("passes on the dask.distributed cluster at %s", scheduler)
            yield client
