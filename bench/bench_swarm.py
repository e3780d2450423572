"""Loopback swarm benchmark: thetadist side by side with libtorrent 2.1.1, in the same run.

    python -m bench.bench_swarm [--scenario all|1to1|1to8|capped|rss] [--repeat 3]
                                [--workdir bench-out/swarm] [--size 64MiB] [--sides both]

Scenarios (sizes are the defaults; ``--size`` overrides them all for a quick check):

* ``1to1``   1 seeder → 1 fetcher, 1 GiB: throughput thetadist ÷ libtorrent ``--profile hps``,
  target ≥ 1.0×.
* ``1to8``   1 seeder → 8 fetchers, 512 MiB (tracker, fetchers keep seeding): wall time
  thetadist ÷ libtorrent hps, target ≤ 1.0×.
* ``capped`` seeder capped at 20 MB/s → 8 fetchers, 256 MiB: time until all have finished ÷ the
  P2P ideal (size ÷ 20 MB/s), target ≤ 1.2× with the seeder uploading ≤ 1.1× the size;
  libtorrent runs with ``--seed-upload-limit 20MB`` and again with ``--super-seed``.
* ``rss``    1 seeder → 1 fetcher, 4 GiB: the fetcher's peak RSS, target ≤ 150 MB, beside the
  libtorrent leecher's.  Judged on VmHWM (sampled from /proc, what swarm.py reports for libtorrent);
  ``os.wait4``'s ru_maxrss is reported too but is only an upper bound: Linux starts a child's
  ru_maxrss at its parent's peak RSS, so it can never read below this harness's own peak.

Each round runs every arm of a scenario once, the order rotating from round to round, so both tools
see the same machine; the figures are medians over the rounds.  libtorrent runs through the shared
anchor harness ``swarm.py`` (one ``--repeat 1`` invocation per round, in ``.venv-anchor``, created
on first use); thetadist through its CLI (see :mod:`bench.swarm_run`).  Before every run of either
tool: wait up to ``--quiet-wait`` s for an idle machine, ``sync``.  Clocks: libtorrent's starts when
its (already started) leechers are told to connect; ours when the fetcher processes are spawned, so
thetadist's figure also carries interpreter start-up and manifest loading (conservative).  Every
copy is checked against the source by BLAKE3 before a run counts.

JSON on stdout, human lines on stderr.  Exit status 2 when the thetadist CLI lacks what the
benchmark drives (``--sides libtorrent`` still measures the anchor), 1 when an arm had no good run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.swarm_run import (
    SwarmSpec,
    preflight,
    run_swarm,
    thetadist_argv,
    tree_digests,
    wait_quiet,
)
from thetadist.units import parse_size

REPO = Path(__file__).resolve().parents[1]
LIBTORRENT = "libtorrent==2.1.1"
RSS_LIMIT = 150_000_000  # "150 MB", decimal
FILE_NAME = "payload.bin"


@dataclass(frozen=True)
class Scenario:
    name: str
    size: int
    fetchers: int
    lt_profile: str
    title: str


SCENARIOS = {
    "1to1": Scenario("1to1", 2**30, 1, "hps", "1 seeder → 1 fetcher: throughput"),
    "1to8": Scenario("1to8", 512 * 2**20, 8, "hps", "1 seeder → 8 fetchers: wall time"),
    "capped": Scenario("capped", 256 * 2**20, 8, "default", "seeder capped → 8 fetchers"),
    "rss": Scenario("rss", 4 * 2**30, 1, "hps", "fetcher peak RSS"),
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


# -- libtorrent side ---------------------------------------------------------------------------


def anchor_script(option: str | None) -> Path:
    path = Path(option) if option else REPO.parent / "shared" / "anchors" / "libtorrent"
    if path.is_dir():
        path = path / "swarm.py"
    if not path.is_file():
        sys.exit(f"error: libtorrent anchor harness not found at {path} (use --anchor PATH)")
    return path.resolve()


def anchor_python(option: str | None) -> Path:
    """The venv interpreter with libtorrent and blake3 (created in .venv-anchor if missing)."""
    if option:
        return Path(option)
    venv = REPO / ".venv-anchor"
    python = venv / "bin" / "python"

    def usable() -> bool:
        if not python.exists():
            return False
        probe = subprocess.run(
            [str(python), "-c", "import libtorrent, blake3"], capture_output=True, timeout=60
        )
        return probe.returncode == 0

    if not usable():
        log(f"setting up {venv} with {LIBTORRENT} (once)")
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        # blake3: without it swarm.py silently skips the check of the copies
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", LIBTORRENT, "blake3"],
            check=True,
            timeout=900,
        )
        if not usable():
            sys.exit(f"error: {python} still cannot import libtorrent and blake3")
    return python


@dataclass
class Tools:
    python: Path
    script: Path
    workdir: Path
    quiet_wait: float
    run_timeout: float
    keep: bool


def run_libtorrent(
    tools: Tools, sc: Scenario, size: int, label: str, limit: int = 0, super_seed: bool = False
) -> dict[str, Any]:
    out = tools.workdir / "libtorrent" / f"{label}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    tmp = tools.workdir / "libtorrent" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    argv = [
        str(tools.python),
        str(tools.script),
        "--leechers",
        str(sc.fetchers),
        "--size",
        str(size),
        "--profile",
        sc.lt_profile,
        "--repeat",
        "1",
        "--quiet-wait",
        str(tools.quiet_wait),
        "--run-timeout",
        str(tools.run_timeout),
        "--workdir",
        str(tmp),
        "--json-out",
        str(out),
        "--label",
        label,
    ]
    if limit:
        argv += ["--seed-upload-limit", str(limit)]
    if super_seed:
        argv.append("--super-seed")
    if tools.keep:
        argv.append("--keep")
    # data generation (~100 MB/s), torrent creation, quiet wait, prep and the run itself
    budget = tools.run_timeout + tools.quiet_wait + 300 + size / 20e6 + 120
    (tools.workdir / "libtorrent" / f"{label}.argv").write_text(json.dumps(argv) + "\n")
    with open(tools.workdir / "libtorrent" / f"{label}.log", "wb") as logfile:
        proc = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.terminate()  # swarm.py turns SIGTERM into cleanup (kills its workers)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return {"ok": False, "error": f"swarm.py overran {budget:.0f} s (killed)"}
    runs = []
    if out.exists():
        for line in out.read_text().splitlines():
            record = json.loads(line)
            if "run" in record:
                runs.append(record)
    if proc.returncode != 0 or not runs:
        tail = (tools.workdir / "libtorrent" / f"{label}.log").read_text(errors="replace")
        return {"ok": False, "error": f"swarm.py exit {proc.returncode}: {tail[-400:].strip()}"}
    r = runs[-1]
    wall = float(r["wall_s"])
    kb = 1024
    result: dict[str, Any] = {
        "ok": bool(r["ok"]) and r.get("verified") is True,
        "error": None,
        "wall_s": round(wall, 4),
        "fetcher_done_s": [round(t, 4) for t in r["leecher_done_s"]],
        "MBps": round(size / wall / 1e6, 1),
        "aggregate_MBps": round(r["aggregate_goodput_MBps"], 1),
        "seeder_uploaded": r["seeder_uploaded"],
        "seeder_upload_ratio": round(r["seeder_upload_ratio"], 3),
        "fetcher_vmhwm_bytes": [v * kb if v else None for v in r["vmhwm_kb"][1:]],
        "seeder_vmhwm_bytes": (r["vmhwm_kb"][0] or 0) * kb,
        "fetcher_peak_rss_bytes": [
            (w or {}).get("ru_maxrss_kb", 0) * kb or None for w in r.get("workers", [])[1:]
        ],
        "foreign_cores": round(r["foreign_cores"], 2),
        "sys_busy_cores": round(r["sys_busy_cores"], 2),
        "verified": r.get("verified"),
    }
    if not result["ok"]:
        result["error"] = f"swarm.py run ok={r['ok']} verified={r.get('verified')}"
    return result


# -- thetadist side ----------------------------------------------------------------------------


@dataclass
class Dataset:
    data_dir: Path
    manifest: Path
    digests: dict[str, str]


def prepare_dataset(workdir: Path, size: int) -> Dataset:
    """One incompressible file of ``size`` bytes (kept between runs) and a fresh manifest."""
    base = workdir / "data" / str(size)
    data_dir = base / "payload"
    path = data_dir / FILE_NAME
    if not path.exists() or path.stat().st_size != size:
        log(f"writing {human_size(size)} of noise to {path}")
        shutil.rmtree(data_dir, ignore_errors=True)
        # in a child: the 64 MiB blocks would raise this process's peak RSS, which every
        # fetcher's ru_maxrss inherits (see bench.swarm_run.tree_digests)
        code = "import sys; from pathlib import Path; from bench.common import write_noise; "
        code += "write_noise(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])"
        subprocess.run(
            [sys.executable, "-c", code, str(path), str(size), f"swarm/{size}"],
            cwd=REPO,
            check=True,
            timeout=3600,
        )
    manifest = base / "payload.tdm"
    done = subprocess.run(
        thetadist_argv("manifest", "create", str(data_dir), "-o", str(manifest), "--json"),
        capture_output=True,
        timeout=600,
    )
    if done.returncode != 0:
        sys.exit(f"error: thetadist manifest create failed: {done.stderr.decode()[-400:]}")
    return Dataset(data_dir, manifest, tree_digests(data_dir))


def run_thetadist(
    tools: Tools, sc: Scenario, data: Dataset, size: int, label: str, cap: str | None
) -> dict[str, Any]:
    run_dir = tools.workdir / "thetadist" / label
    shutil.rmtree(run_dir, ignore_errors=True)
    if tools.quiet_wait > 0:
        wait_quiet(tools.quiet_wait)
    os.sync()
    many = sc.fetchers > 1
    return run_swarm(
        SwarmSpec(
            data_dir=data.data_dir,
            manifest=data.manifest,
            size=size,
            fetchers=sc.fetchers,
            run_dir=run_dir,
            source_digests=data.digests,
            keep_seeding=many,
            max_upload_rate=cap,
            # A capped origin is what super-seeding is for; libtorrent runs both ways.
            super_seed=cap is not None,
            run_timeout=tools.run_timeout,
            keep=tools.keep,
        )
    )


# -- scenarios and report ----------------------------------------------------------------------


def med(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get("ok") and isinstance(r.get(key), int | float)]
    return round(statistics.median(values), 4) if values else None


def peak_rss(runs: list[dict[str, Any]], key: str = "fetcher_vmhwm_bytes") -> int | None:
    values = [v for r in runs if r.get("ok") for v in r.get(key) or [] if v]
    return max(values) if values else None


def arm_summary(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    rss = metric == "fetcher_vmhwm_bytes"
    return {
        "metric": metric,
        "max" if rss else "median": peak_rss(runs) if rss else med(runs, metric),
        "wall_s": med(runs, "wall_s"),
        "MBps": med(runs, "MBps"),
        "seeder_upload_ratio": med(runs, "seeder_upload_ratio"),
        "fetcher_vmhwm_bytes_max": peak_rss(runs),
        "fetcher_ru_maxrss_bytes_max": peak_rss(runs, "fetcher_peak_rss_bytes"),
        "runs_ok": sum(1 for r in runs if r.get("ok")),
        "runs": runs,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def run_scenario(
    sc: Scenario, args: argparse.Namespace, tools: Tools, sides: set[str]
) -> dict[str, Any]:
    size = parse_size(args.size) if args.size else sc.size
    cap_rate = parse_size(args.cap_rate)
    capped = sc.name == "capped"
    log(f"== {sc.name}: {sc.title}, {human_size(size)}, {sc.fetchers} fetcher(s)")
    data = prepare_dataset(tools.workdir, size) if "thetadist" in sides else None
    arms: list[tuple[str, Any]] = []
    if data is not None:
        cap = f"{args.cap_rate}/s" if capped else None
        arms.append(("thetadist", lambda label: run_thetadist(tools, sc, data, size, label, cap)))
    if "libtorrent" in sides:
        limit = cap_rate if capped else 0
        arms.append(("libtorrent", lambda label: run_libtorrent(tools, sc, size, label, limit)))
        if capped:
            arms.append(
                (
                    "libtorrent_super_seed",
                    lambda label: run_libtorrent(tools, sc, size, label, limit, super_seed=True),
                )
            )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in arms}
    for k in range(args.repeat):
        shift = k % len(arms)
        for name, run in arms[shift:] + arms[:shift]:
            started = time.monotonic()
            r = run(f"{sc.name}-{name}-{k}")
            r["round"] = k
            results[name].append(r)
            with open(tools.workdir / "runs.jsonl", "a") as jsonl:
                record = {"scenario": sc.name, "arm": name, "size": size, **r}
                jsonl.write(json.dumps(record) + "\n")
            if r.get("ok"):
                rss = max((v for v in r.get("fetcher_vmhwm_bytes") or [] if v), default=0)
                log(
                    f"  round {k} {name:<22} wall {r['wall_s']:7.2f} s  {r['MBps']:6.0f} MB/s  "
                    f"seeder up {r.get('seeder_upload_ratio') or float('nan'):.2f}×  "
                    f"fetcher RSS {rss / 1e6:4.0f} MB  ({time.monotonic() - started:.0f} s)"
                )
            else:
                log(f"  round {k} {name:<22} FAILED: {r.get('error')}")

    metric = {
        "1to1": "MBps",
        "1to8": "wall_s",
        "capped": "wall_s",
        "rss": "fetcher_vmhwm_bytes",
    }[sc.name]
    report: dict[str, Any] = {
        "size": size,
        "fetchers": sc.fetchers,
        "libtorrent_profile": sc.lt_profile,
    }
    for name in results:
        report[name] = arm_summary(results[name], metric)
    td = report.get("thetadist", {})
    lt = report.get("libtorrent", {})
    if sc.name == "1to1":
        report["ratio"] = ratio(td.get("median"), lt.get("median"))
        report["target"] = "thetadist MB/s ÷ libtorrent hps MB/s ≥ 1.0"
        report["met"] = None if report["ratio"] is None else report["ratio"] >= 1.0
    elif sc.name == "1to8":
        report["ratio"] = ratio(td.get("median"), lt.get("median"))
        report["target"] = "thetadist wall ÷ libtorrent hps wall ≤ 1.0"
        report["met"] = None if report["ratio"] is None else report["ratio"] <= 1.0
    elif sc.name == "capped":
        ideal = size / cap_rate
        report["cap_bytes_per_s"] = cap_rate
        report["ideal_p2p_s"] = round(ideal, 3)
        report["ratio"] = ratio(td.get("median"), ideal)
        report["seeder_upload_ratio"] = td.get("seeder_upload_ratio")
        report["target"] = "wall ÷ (size ÷ cap) ≤ 1.2 and seeder uploaded ÷ size ≤ 1.1"
        up = report["seeder_upload_ratio"]
        fast = None if report["ratio"] is None else report["ratio"] <= 1.2
        report["met"] = fast and up is not None and up <= 1.1
        for name in ("libtorrent", "libtorrent_super_seed"):
            if name in report:
                report[f"{name}_over_ideal"] = ratio(report[name]["median"], ideal)
                report[f"thetadist_over_{name}"] = ratio(td.get("median"), report[name]["median"])
    else:
        report["limit_bytes"] = RSS_LIMIT
        report["ratio"] = ratio(td.get("max"), lt.get("max"))  # thetadist ÷ libtorrent leecher
        report["target"] = "max fetcher VmHWM ≤ 150 MB (ratio: ÷ libtorrent leecher VmHWM)"
        report["met"] = None if td.get("max") is None else td["max"] <= RSS_LIMIT
        # os.wait4's ru_maxrss is an upper bound: floored at this harness's own peak RSS
        ru = td.get("fetcher_ru_maxrss_bytes_max")
        report["met_by_ru_maxrss"] = None if ru is None else ru <= RSS_LIMIT
    return report


def describe(name: str, r: dict[str, Any]) -> str:
    def arm(key: str) -> str:
        a = r.get(key)
        if not a:
            return f"{key} -"
        if a["runs_ok"] == 0:
            return f"{key} FAILED"
        if a["metric"] == "fetcher_vmhwm_bytes":
            return f"{key} {a['max'] / 1e6:.0f} MB ({a['MBps']:.0f} MB/s)"
        up = a["seeder_upload_ratio"]
        up_text = f", seeder up {up:.2f}×" if up is not None else ""
        return f"{key} {a['wall_s']:.2f} s / {a['MBps']:.0f} MB/s{up_text}"

    parts = [arm("thetadist"), arm("libtorrent")]
    if "libtorrent_super_seed" in r:
        parts.append(arm("libtorrent_super_seed"))
    if name == "capped":
        parts.append(f"ideal {r['ideal_p2p_s']:.2f} s")
    verdict = {True: "met", False: "NOT met", None: "n/a"}[r["met"]]
    ratio_text = "-" if r["ratio"] is None else f"{r['ratio']:.2f}×"
    return f"{name:<7} {' | '.join(parts)} → ratio {ratio_text} ({r['target']}: {verdict})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=["all", *SCENARIOS], default="all")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median over them)")
    parser.add_argument("--workdir", default="bench-out/swarm")
    parser.add_argument("--size", default=None, help="override every scenario's size (e.g. 64MiB)")
    parser.add_argument("--sides", choices=["both", "thetadist", "libtorrent"], default="both")
    parser.add_argument("--cap-rate", default="20MB", help="seeder upload cap in `capped` (B/s)")
    parser.add_argument("--anchor", default=None, help="libtorrent swarm.py (or its folder)")
    parser.add_argument("--anchor-python", default=None, help="python with libtorrent + blake3")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="max idle wait per run (s)")
    parser.add_argument("--run-timeout", type=float, default=600.0, help="per run (s)")
    parser.add_argument("--keep", action="store_true", help="keep the fetched copies (debug)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be ≥ 1")
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    sides = {"thetadist", "libtorrent"} if args.sides == "both" else {args.sides}
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    if "thetadist" in sides:
        missing = preflight(need_tracker=any(SCENARIOS[n].fetchers > 1 for n in names))
        if missing:
            log(f"error: the thetadist swarm CLI is not ready: {missing}")
            log("       (run with --sides libtorrent to measure only the anchor)")
            sys.exit(2)
    tools = Tools(
        python=anchor_python(args.anchor_python) if "libtorrent" in sides else Path(),
        script=anchor_script(args.anchor) if "libtorrent" in sides else Path(),
        workdir=workdir,
        quiet_wait=args.quiet_wait,
        run_timeout=args.run_timeout,
        keep=args.keep,
    )
    reports = {name: run_scenario(SCENARIOS[name], args, tools, sides) for name in names}
    log("")
    for name, r in reports.items():
        log(describe(name, r))
    print(
        json.dumps(
            {
                "bench": "swarm",
                "cores": os.cpu_count(),
                "repeat": args.repeat,
                "sides": sorted(sides),
                "scenarios": reports,
            }
        )
    )
    failed = [
        f"{n}/{arm}"
        for n, r in reports.items()
        for arm in ("thetadist", "libtorrent", "libtorrent_super_seed")
        if arm in r and r[arm]["runs_ok"] == 0
    ]
    if failed:
        log(f"no good run for: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
