"""`bipsim fleet --engine dask`: the fleet's workers as tasks of a Dask distributed cluster (docs/performance.md,
"Beyond one machine"), with the optional dependency `distributed` (pip install 'bipsim[fleet]').

Each worker of ota/fleet.py becomes one task, `dask_task`, that calls the same `worker_main` a local child process
runs (trio.run in the Dask worker's task thread, in a process of its own) and puts its events on a
`distributed.Queue` named for the run; the coordinator drains the queue a few times a second and hands the events to
the same FleetTally, so the report is the same whatever ran the fleet. Without a scheduler address the engine starts
a LocalCluster of K single-threaded worker processes on this machine; with one (`--scheduler tcp://host:8786`) the
tasks go to that cluster, whose workers must have bipsim installed and reach the OTA server.

A task whose Dask worker dies is not run again (retries 0, and the local cluster allows no failures): the
coordinator counts it as a dead worker, as with the local engine, instead of running its cards twice.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import trio

from bipsim.errors import CliError
from bipsim.ota.fleet import Emit, Event, Exited, WorkerSpec, worker_main

POLL = 0.2  # seconds between two looks at the queue and the futures


def dask_task(spec: dict[str, Any], queue_name: str) -> str:
    """One fleet worker inside a Dask worker: its events go on the run's queue; returns "done"."""
    from distributed import Queue

    queue = Queue(queue_name)

    def emit(event: Event) -> None:
        queue.put(event)

    worker_main(WorkerSpec.from_dict(spec), emit)
    return "done"


class DaskEngine:
    """Runs the workers on a Dask distributed cluster: a LocalCluster of `workers` processes, or `scheduler`'s."""

    name = "dask"

    def __init__(self, *, scheduler: str | None, workers: int) -> None:
        self.scheduler = scheduler
        self.workers = workers

    def _start(self) -> tuple[Any, Any]:
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise CliError("--engine dask needs the 'fleet' extra: pip install 'bipsim[fleet]'") from exc
        if self.scheduler:
            try:
                return Client(self.scheduler, timeout=30), None
            except (OSError, TimeoutError) as exc:
                raise CliError(f"cannot reach the Dask scheduler at {self.scheduler}: {exc}") from exc
        # a task whose worker dies is reported, not run again (its cards would run twice); and the workers'
        # statistical profiler (a thread sampling every 10 ms) is off: our task thread is the CPU-bound one
        dask.config.set(
            {"distributed.scheduler.allowed-failures": 0, "distributed.worker.profile.enabled": False}
        )
        cluster = LocalCluster(
            host="127.0.0.1",  # the scheduler and workers listen on loopback only
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        return Client(cluster), cluster

    async def run(self, specs: list[WorkerSpec], sink: Emit, exited: Exited) -> None:
        client, cluster = await trio.to_thread.run_sync(self._start)
        try:
            await self._run(client, specs, sink, exited)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close, client, cluster)

    async def _run(self, client: Any, specs: list[WorkerSpec], sink: Emit, exited: Exited) -> None:
        from distributed import Queue

        run = uuid.uuid4().hex[:12]
        queue_name = f"bipsim-fleet-{run}"

        def submit() -> tuple[Any, dict[int, Any]]:
            queue = Queue(queue_name, client=client)
            futures = {
                spec.worker: client.submit(
                    dask_task,
                    spec.to_dict(),
                    queue_name,
                    key=f"bipsim-fleet-{run}-w{spec.worker}",
                    pure=False,
                    retries=0,
                )
                for spec in specs
            }
            return queue, futures

        queue, futures = await trio.to_thread.run_sync(submit)
        try:
            while futures:
                finished = {w: f for w, f in futures.items() if f.done()}
                # a finished task's puts were all acknowledged before it returned: drain, then judge it
                for event in await trio.to_thread.run_sync(_drain, queue):
                    sink(event)
                for worker, future in finished.items():
                    del futures[worker]
                    exited(worker, await trio.to_thread.run_sync(_failure, future))
                if futures:
                    await trio.sleep(POLL)
        finally:
            for future in futures.values():
                future.cancel()


def _drain(queue: Any) -> list[Event]:
    events = queue.get(batch=True)
    return [e for e in events if isinstance(e, dict)]


def _failure(future: Any) -> str | None:
    """None for a task that returned, else why it did not (a killed worker, an exception in the task)."""
    if future.status == "finished":
        return None
    try:
        error = future.exception(timeout=5)
    except Exception as exc:  # the scheduler lost the task: still a dead worker, with the reason
        return f"{type(exc).__name__}: {exc}"
    if error is None:
        return f"task {future.status}"
    return f"{type(error).__name__}: {error}"


def _close(client: Any, cluster: Any) -> None:
    client.close()
    if cluster is not None:
        cluster.close()
