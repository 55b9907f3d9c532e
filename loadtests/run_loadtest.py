"""Run the Visus load test headless against a running server and keep its reports.

    make serve                                        # first: a local Visus (or set LOADTEST_HOST)
    .venv/bin/python loadtests/run_loadtest.py        # = make loadtest: steady, 6 users, 60 s
    .venv/bin/python loadtests/run_loadtest.py --shape step --seconds 120
    .venv/bin/python loadtests/run_loadtest.py --shape steady,step --benchmarks   # rewrites BENCHMARKS.md's section
    .venv/bin/python loadtests/run_loadtest.py --render loadtests/results/<date-time>  # the same, from a past run
    LOADTEST_HOST=https://visus.example.com VISUS_API_KEY=... .venv/bin/python loadtests/run_loadtest.py \
        --shape step --users 40 --seconds 900

Runs Locust (``loadtests/load/locustfile.py``) as its own process, once per shape, into
``loadtests/results/<date-time>/``: ``<shape>_stats.csv``, ``_stats_history.csv``, ``_failures.csv``,
``_exceptions.csv``, ``<shape>.html`` and ``<shape>.json`` (figures and threshold verdict). The key is
``VISUS_API_KEY``, else ``.visus/api_key`` (what `make serve` wrote). The exit code is non-zero when
any run broke a threshold (see loadtests/load/thresholds.py) or Locust failed. Arguments after
``--`` go to Locust unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtests.load import schedules, settings  # noqa: E402  (pure Python: no Locust, no ray)

LOCUSTFILE = REPO / "loadtests" / "load" / "locustfile.py"
RESULTS = REPO / "loadtests" / "results"
MARK_START = "<!-- bench:loadtest:start -->"
MARK_END = "<!-- bench:loadtest:end -->"
AFTER_MARK = "<!-- bench:svd:end -->"

SECTION_INTRO = f"""## Load tests

`loadtests/load/` holds Locust users for every endpoint family, each task skipped when the server does
not serve its endpoint (checked in `/openapi.json` at start): fal sync runs (`sam2/image`, `evf-sam`), the
fal queue flow (submit, poll the status every 0.25 s, fetch the result: `sam2/video`, `svd`), Segmind
`sam-v2-image` (points and text), server-sent events (a streaming `sam2/video` run; an `svd` job followed
on its status stream) and Sa2VA (`sa2va/8b/image`, `/video`) when served. Inputs are generated and sent
as data URIs: a 256x192 PNG, a 16-frame 128x96 H.264 video. Each user pauses 0.5-1.5 s between tasks.
Shapes: steady, step and spike (`loadtests/load/schedules.py`). At the end the thresholds (p95 per
request group, failure ratios) set Locust's exit code.

Reproduce with `make serve` then `make loadtest` (one steady minute), or
`.venv/bin/python loadtests/run_loadtest.py --shape steady,step --benchmarks` to rewrite this section.
The server is `make serve`'s default: every endpoint on the tiny random checkpoints, CPU only, one
replica each at start and autoscaling as configured, on the same 2-core machine as the load generator
(the load average at start still holds `make serve`'s deployment); read the figures as the platform's
behaviour under concurrent mixed load, not as model speed.

{MARK_START}
{MARK_END}
"""


def locust_command(args, shape: str, out: Path) -> list[str]:
    cmd = [str(Path(sys.executable).with_name("locust")), "-f", str(LOCUSTFILE), "--headless",
           "--host", args.host, "--shape", shape, "--shape-users", str(args.users),
           "--shape-seconds", str(args.seconds), "--csv", str(out / shape), "--csv-full-history",
           "--html", str(out / f"{shape}.html"), "--summary-json", str(out / f"{shape}.json"),
           "--stop-timeout", str(args.stop_timeout), "--only-summary", "--loglevel", "INFO"]
    for flag, value in (("--p95-ms", args.p95_ms), ("--max-fail-ratio", args.max_fail_ratio),
                        ("--max-group-fail-ratio", args.max_group_fail_ratio)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + args.locust_args


def table(summary: dict) -> str:
    """The run's request groups as a markdown table (families together), then the totals."""
    rows = ["| family | request | type | requests | failures | req/s | p50 ms | p95 ms | p99 ms | p95 limit ms |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in sorted(summary["entries"], key=lambda e: (e["name"].split(" ", 1)[0], e["name"])):
        family, _, request = e["name"].partition(" ")
        limit = f"{e['p95_limit_ms']:.0f}" if e.get("p95_limit_ms") else "-"
        rows.append(f"| {family} | {request} | {e['type']} | {e['requests']} | {e['failures']} | {e['rps']:.2f} | "
                    f"{e['p50_ms']:.0f} | {e['p95_ms']:.0f} | {e['p99_ms']:.0f} | {limit} |")
    t = summary["total"]
    rows.append(f"| **all** | | | {t['requests']} | {t['failures']} | {t['rps']:.2f} | {t['p50_ms']:.0f} | "
                f"{t['p95_ms']:.0f} | {t['p99_ms']:.0f} | |")
    return "\n".join(rows)


def stage_table(summary: dict) -> str:
    """Per stage of the shape: HTTP requests/s, failures, and per family p50 / p95 of what a client waits for."""
    stages = summary.get("stages") or []
    families = sorted({f for s in stages for f in s["families"]})
    rows = ["| stage | users | s | HTTP req/s | failures | " + " | ".join(f"{f} p50 / p95 ms" for f in families) + " |",
            "|---:|---:|---:|---:|---:|" + "---:|" * len(families)]
    for s in stages:
        cells = []
        for f in families:
            fam = s["families"].get(f)
            cells.append(f"{fam['p50_ms']:.0f} / {fam['p95_ms']:.0f}" if fam else "-")
        rows.append(f"| {s['stage']} | {s['users']} | {s['seconds']:.0f} | {s['rps']:.2f} | {s['failures']} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def verdict(summary: dict) -> str:
    t = summary["total"]
    ratio = t["failures"] / t["requests"] if t["requests"] else 0.0
    broken = "; ".join(summary["violations"])
    return (f"failure ratio {ratio:.4f}; thresholds: p95 `{summary['thresholds']['p95_ms']}`, failure ratio <= "
            f"{summary['thresholds']['max_fail_ratio']:g} overall and <= {summary['thresholds']['max_group_fail_ratio']:g} "
            f"per group: " + ("**passed**" if summary["passed"] else f"**failed** ({broken})"))


def section(runs: list[dict], meta: dict) -> str:
    parts = [f"Run {meta['date']} on {meta['machine']}; load average (1/5/15 min) at start {meta['load_start']}, "
             f"at end {meta['load_end']}; host {meta['host']}.\n"]
    for run in runs:
        s = run["summary"]
        skipped = f" Skipped (not served): {', '.join(s['skipped'])}." if s["skipped"] else ""
        parts.append(f"**{s['shape']}** ({s['schedule']}; users: {', '.join(s['user_classes'])}.{skipped} "
                     f"Locust exit code {run['rc']})\n")
        parts.append(table(s) + "\n")
        if len(s.get("stages") or []) > 1:
            parts.append("Per stage (exact percentiles of successful requests; queue: the whole job, sse: the whole "
                         "stream; `-`: no user of that family ran in that stage, as Locust hands users out by "
                         "weight, so the first stages of a step carry only some families):\n\n"
                         + stage_table(s) + "\n")
        parts.append(verdict(s) + "\n")
    parts.append("Request groups: `<family> <step> <endpoint>`. Type JOB is a whole queue job, submit to result "
                 "(its status is polled every 0.25 s, so it ends up to 0.25 s after the job does); `sse run` and "
                 "`sse status-stream` are timed from the request to the end of the stream (its final event). "
                 "Percentiles in the request tables are Locust's (rounded to 10 ms above 100 ms); req/s over the "
                 "whole run, ramps included.\n")
    return "\n".join(parts)


def loadavg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    locust_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default=os.environ.get("LOADTEST_SHAPE", "steady"),
                        help="one shape or several, comma-separated, run one after the other: steady, step, spike")
    parser.add_argument("--users", type=int, default=int(os.environ.get("LOADTEST_USERS", schedules.DEFAULT_USERS)),
                        help="peak users (default 6)")
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("LOADTEST_DURATION_S", schedules.DEFAULT_SECONDS)),
                        help="length of each run (default 60)")
    parser.add_argument("--host", default=settings.host(), help="server URL (default LOADTEST_HOST or 127.0.0.1:8000)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default loadtests/results/<date-time>)")
    parser.add_argument("--p95-ms", default=None, help="p95 limits, 'PATTERN=MS, ...' (default: the locustfile's)")
    parser.add_argument("--max-fail-ratio", type=float, default=None)
    parser.add_argument("--max-group-fail-ratio", type=float, default=None)
    parser.add_argument("--stop-timeout", type=int, default=60, help="seconds the users get to finish at the end")
    parser.add_argument("--benchmarks", nargs="?", const=REPO / "BENCHMARKS.md", type=Path, default=None,
                        help="rewrite the load-test section of this markdown file (default BENCHMARKS.md)")
    parser.add_argument("--render", type=Path, default=None, metavar="RESULTS_DIR",
                        help="run nothing: rewrite the --benchmarks section from an earlier run's report folder")
    args = parser.parse_args(argv)
    args.locust_args = locust_args
    if args.render:
        return render(args.render, args.benchmarks or REPO / "BENCHMARKS.md")
    shapes = [s.strip() for s in args.shape.split(",") if s.strip()]
    for shape in shapes:
        schedules.make_schedule(shape, args.users, args.seconds)  # fail early on a bad shape
    key = settings.api_key()
    if not key:
        print(f"no API key: set VISUS_API_KEY, or run `make serve` first (it writes {settings.key_file()})",
              file=sys.stderr)
        return 2
    out = args.out or RESULTS / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VISUS_API_KEY": key, "LOADTEST_HOST": args.host}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_start": loadavg(), "host": args.host}
    runs, worst = [], 0
    for shape in shapes:
        schedule = schedules.describe(schedules.make_schedule(shape, args.users, args.seconds))
        print(f"== {schedule} against {args.host}", flush=True)
        rc = subprocess.call(locust_command(args, shape, out), env=env, cwd=REPO)
        summary_path = out / f"{shape}.json"
        if not summary_path.exists():
            print(f"Locust ended with exit code {rc} and no summary", file=sys.stderr)
            return rc or 2
        summary = json.loads(summary_path.read_text())
        staged = "\n\n" + stage_table(summary) if len(summary.get("stages") or []) > 1 else ""
        print("\n" + table(summary) + staged + "\n\n" + verdict(summary).replace("**", "") + f"; exit code {rc}\n",
              flush=True)
        runs.append({"summary": summary, "rc": rc})
        worst = worst or rc
    from loadtests.benchmark import machine

    meta.update(load_end=loadavg(), machine=machine())
    (out / "run.json").write_text(json.dumps({"meta": meta, "runs": [{"shape": r["summary"]["shape"], "rc": r["rc"]}
                                                                     for r in runs]}, indent=2))
    print(f"reports in {out}: " + ", ".join(f"{s}.html" for s in shapes) + " (and the CSVs, JSON summaries)")
    if args.benchmarks:
        write_benchmarks(args.benchmarks, runs, meta)
    return worst


def write_benchmarks(path: Path, runs: list[dict], meta: dict) -> None:
    from loadtests.benchmark import write_section

    write_section(path, section(runs, meta), MARK_START, MARK_END, intro=SECTION_INTRO, after=AFTER_MARK)
    print(f"wrote the load-test section of {path}")


def render(folder: Path, path: Path) -> int:
    """Rewrite the load-test section of `path` from an earlier run's report folder (its run.json)."""
    run = json.loads((folder / "run.json").read_text())
    runs = [{"summary": json.loads((folder / f"{r['shape']}.json").read_text()), "rc": r["rc"]} for r in run["runs"]]
    write_benchmarks(path, runs, run["meta"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
