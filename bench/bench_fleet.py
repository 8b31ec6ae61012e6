"""Fleet scaling (bipsim fleet, ota/fleet.py), all in one run, against the fleet's own OTA server on 127.0.0.1:

1. ratio_2_workers: completed sessions/s of the same fleet with 2 worker processes against 1 (the server with
   1 worker process, then the same with the server on 2: `ratio_2_workers_server_2`).
2. p99 latency (and p50, sessions/s) of 1 000 cards, one session each, 2 workers, 100 sessions open per worker.
3. dask_ratio: the Dask distributed engine's LocalCluster (2 processes) against the plain worker pool (2 processes),
   same fleet; skipped (null) when the 'fleet' extra is not installed.

Also the CPU seconds per session of the workers and of the server, which say where the cores went: on a machine
with C cores running the server too, K workers can at best give min(K, C * w / (w + s)) times one worker's rate when
a session costs w CPU seconds in a worker and s in the server. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

import trio

from bipsim.ota.fleet import Engine, FleetConfig, FleetReport, LocalEngine, run_fleet

CARDS = 200
SESSIONS = 600
BIG = 1000


def fleet(*, workers: int, server_workers: int = 1, flush: float = 0.0) -> FleetConfig:
    return FleetConfig(
        cards=CARDS, sessions=SESSIONS, seed=1, workers=workers, server_workers=server_workers, flush=flush
    )


async def one(config: FleetConfig, engine: Engine) -> FleetReport:
    report = await run_fleet(config, engine)
    if not report.ok:
        raise SystemExit(f"fleet failed: {report.to_dict()}")
    return report


def per_session(report: FleetReport) -> dict[str, float]:
    sessions = max(1, report.completed)
    return {
        "worker_cpu_ms": round(report.workers_cpu_s / sessions * 1000, 3),
        "server_cpu_ms": round(float(report.server.get("cpu_s", 0)) / sessions * 1000, 3),
    }


def bound(one: FleetReport, two: FleetReport) -> float:
    cores = os.cpu_count() or 1
    w = (per_session(one)["worker_cpu_ms"] + per_session(two)["worker_cpu_ms"]) / 2
    s = (per_session(one)["server_cpu_ms"] + per_session(two)["server_cpu_ms"]) / 2
    one_rate = 1 / max(w, s, (w + s) / cores)
    two_rate = min(2 / w, 1 / s, cores / (w + s))
    return round(two_rate / one_rate, 3)


async def main() -> None:
    one_worker = await one(fleet(workers=1), LocalEngine())
    two_workers = await one(fleet(workers=2), LocalEngine())
    one_s2 = await one(fleet(workers=1, server_workers=2), LocalEngine())
    two_s2 = await one(fleet(workers=2, server_workers=2), LocalEngine())
    big = await one(FleetConfig(cards=BIG, workers=2, seed=1), LocalEngine())
    dask_rate = None
    try:
        import distributed  # noqa: F401

        from bipsim.ota.fleet_dask import DaskEngine
    except ImportError:
        pass
    else:
        pool = await one(fleet(workers=2, flush=0.5), LocalEngine())
        dask = await one(fleet(workers=2, flush=0.5), DaskEngine(scheduler=None, workers=2))
        dask_rate = (dask.sessions_per_s, pool.sessions_per_s)
    print(
        json.dumps(
            {
                "bench": "fleet",
                "cores": os.cpu_count(),
                "cards": CARDS,
                "sessions": SESSIONS,
                "sessions_per_s_1_worker": one_worker.sessions_per_s,
                "sessions_per_s_2_workers": two_workers.sessions_per_s,
                "ratio_2_workers": round(two_workers.sessions_per_s / one_worker.sessions_per_s, 3),
                "ratio_2_workers_server_2": round(two_s2.sessions_per_s / one_s2.sessions_per_s, 3),
                "cpu_per_session_1_worker": per_session(one_worker),
                "cpu_per_session_2_workers": per_session(two_workers),
                # the best ratio this machine allows with the server on its cores: 2 cores / (w + s) against
                # 1 / max(w, s) (docs/performance.md, "Measured")
                "ratio_bound_here": bound(one_worker, two_workers),
                # worker CPU per session with 1 worker over that with 2: 1.0 when the workers scale linearly
                # on cores of their own
                "worker_cpu_scaling": round(
                    per_session(one_worker)["worker_cpu_ms"] / per_session(two_workers)["worker_cpu_ms"], 3
                ),
                "big_cards": BIG,
                "big_p50_ms": big.p50_ms,
                "big_p99_ms": big.p99_ms,
                "big_sessions_per_s": big.sessions_per_s,
                "dask_sessions_per_s": None if dask_rate is None else dask_rate[0],
                "pool_sessions_per_s": None if dask_rate is None else dask_rate[1],
                "dask_ratio": None if dask_rate is None else round(dask_rate[0] / dask_rate[1], 3),
                "load_average": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(trio.run(main))
