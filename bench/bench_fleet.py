"""Fleet scaling (bipsim fleet, ota/fleet.py), all in one run, against the fleet's own OTA server on 127.0.0.1:

1. ratio_2_workers: completed sessions/s of the same fleet with 2 worker processes against 1 (the server with
   1 worker process, then the same with the server on 2: `ratio_2_workers_server_2`).
2. p99 latency (and p50, sessions/s) of 1 000 cards, one session each, 2 workers, 100 sessions open per worker.
3. dask_ratio: the Dask distributed engine's LocalCluster (2 processes) against the plain worker pool (2 processes),
   same fleet; skipped (null) when the 'fleet' extra is not installed.

Every figure is the median of 3 rounds, the configurations taken in turns within each round.

Also the CPU seconds per session of the workers and of the server, which say where the cores went: on a machine
with C cores running the server too, K workers can at best give min(K, C * w / (w + s)) times one worker's rate when
a session costs w CPU seconds in a worker and s in the server. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import trio

from bipsim.ota.fleet import Engine, FleetConfig, FleetReport, LocalEngine, run_fleet

CARDS = 200
SESSIONS = 1500
BIG = 1000
ROUNDS = 3


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


def worker_clock(report: FleetReport) -> float:
    return report.completed / report.workers_wall_s if report.workers_wall_s else 0.0


async def main() -> None:
    try:
        import distributed  # noqa: F401

        from bipsim.ota.fleet_dask import DaskEngine
    except ImportError:
        dask_engine = None
    else:
        dask_engine = DaskEngine
    # each figure is the median of ROUNDS runs taken in turns (A B C ... A B C ...), so that a burst of load from
    # other jobs on a shared machine lands on every configuration alike
    runs: dict[str, list[FleetReport]] = {}
    for _ in range(ROUNDS):
        configs: list[tuple[str, FleetConfig, Engine]] = [
            ("1w", fleet(workers=1), LocalEngine()),
            ("2w", fleet(workers=2), LocalEngine()),
            ("1w_s2", fleet(workers=1, server_workers=2), LocalEngine()),
            ("2w_s2", fleet(workers=2, server_workers=2), LocalEngine()),
            ("big", FleetConfig(cards=BIG, workers=2, seed=1), LocalEngine()),
        ]
        if dask_engine is not None:
            configs.append(("pool", fleet(workers=2, flush=0.5), LocalEngine()))
            configs.append(("dask", fleet(workers=2, flush=0.5), dask_engine(scheduler=None, workers=2)))
        for name, config, engine in configs:
            runs.setdefault(name, []).append(await one(config, engine))

    def rate(name: str) -> float:
        return statistics.median(r.sessions_per_s for r in runs[name])

    def cpu(name: str) -> dict[str, float]:
        return {
            key: round(statistics.median(per_session(r)[key] for r in runs[name]), 3)
            for key in ("worker_cpu_ms", "server_cpu_ms")
        }

    one_cpu, two_cpu = cpu("1w"), cpu("2w")
    w = (one_cpu["worker_cpu_ms"] + two_cpu["worker_cpu_ms"]) / 2
    srv = (one_cpu["server_cpu_ms"] + two_cpu["server_cpu_ms"]) / 2
    cores = os.cpu_count() or 1
    bound = min(2 / w, 1 / srv, cores / (w + srv)) * max(w, srv, (w + srv) / cores)
    big = runs["big"]
    dask = None
    if "dask" in runs:
        dask = {
            "dask_sessions_per_s": rate("dask"),
            "pool_sessions_per_s": rate("pool"),
            "dask_ratio": round(rate("dask") / rate("pool"), 3),
            # the same by the workers' own clocks (completed / the longest worker's run): the engines' steady
            # pace, without the start-up skew between their workers
            "dask_ratio_worker_clock": round(
                statistics.median(map(worker_clock, runs["dask"]))
                / statistics.median(map(worker_clock, runs["pool"])),
                3,
            ),
        }
    print(
        json.dumps(
            {
                "bench": "fleet",
                "cores": cores,
                "rounds": ROUNDS,
                "cards": CARDS,
                "sessions": SESSIONS,
                "sessions_per_s_1_worker": rate("1w"),
                "sessions_per_s_2_workers": rate("2w"),
                "ratio_2_workers": round(rate("2w") / rate("1w"), 3),
                "ratio_2_workers_server_2": round(rate("2w_s2") / rate("1w_s2"), 3),
                "cpu_per_session_1_worker": one_cpu,
                "cpu_per_session_2_workers": two_cpu,
                # the best ratio this machine allows with the server on its cores: min(2 / w, 1 / s, C / (w + s))
                # against 1 / max(w, s, (w + s) / C) (docs/performance.md, "Measured")
                "ratio_bound_here": round(bound, 3),
                # worker CPU per session with 1 worker over that with 2: 1.0 when the workers scale linearly
                # on cores of their own
                "worker_cpu_scaling": round(one_cpu["worker_cpu_ms"] / two_cpu["worker_cpu_ms"], 3),
                "big_cards": BIG,
                "big_p50_ms": statistics.median(r.p50_ms or 0.0 for r in big),
                "big_p99_ms": statistics.median(r.p99_ms or 0.0 for r in big),
                "big_sessions_per_s": rate("big"),
                **(dask or {"dask_ratio": None}),
                "load_average": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(trio.run(main))
