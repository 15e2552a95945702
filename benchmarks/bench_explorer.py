"""Explorer speed: server-side time per click, browser click-to-panel latency, app cold start.

    python benchmarks/bench_explorer.py [--demo fermi-hubbard] [--clicks 50] [--starts 3] [--no-browser]
    python benchmarks/bench_explorer.py --no-server --clicks 20 --starts 1 --json runs.jsonl --label NAME
    python benchmarks/bench_explorer.py --summarise runs.jsonl
    python benchmarks/bench_explorer.py --app landscape --starts 3   # the landscape app's cold start

Needs the demo's caches (``hessview build``); the browser parts need /usr/bin/chromium and
Playwright. Prints a markdown table of medians against the goals (20 ms, 200 ms, 10 s).
``--json`` appends the raw browser timings of a run to a file; running several checkouts' copies
of this script in turn (each serves its own tree) and then ``--summarise`` compares them side by
side, pooled over the interleaved runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (the browser tests' Chromium and flags)

from hessview import cli  # noqa: E402
from hessview.app.demos import load_demo  # noqa: E402
from hessview.app.voila import demo_explorer  # noqa: E402

ALL_PANELS_SHOW = """(index) => {
  const shown = (selector) => Array.from(document.querySelectorAll(selector))
      .filter((el) => el.offsetParent !== null).map((el) => el.getAttribute('data-test-index'));
  return ['.hv-detail', '.hv-uncertainty', '.hv-extrapolation', '.hv-gallery'].every((p) => {
    const s = shown(p + ' [data-test-index]');
    return s.length > 0 && s.every((v) => v === String(index));
  });
}"""
# Per panel: true once it shows test point ``index`` (the influence view names it in its title).
PANEL_CHECKS = """{
  detail: (i) => PANEL(i, '.hv-detail'),
  uncertainty: (i) => PANEL(i, '.hv-uncertainty'),
  extrapolation: (i) => PANEL(i, '.hv-extrapolation'),
  gallery: (i) => PANEL(i, '.hv-gallery'),
  influence: (i) => (document.querySelector('.hv-influence text.mainheading') || {}).textContent
      ?.endsWith('#' + i),
}"""
PANEL = """(i, p) => {
  const s = Array.from(document.querySelectorAll(p + ' [data-test-index]'))
      .filter((el) => el.offsetParent !== null).map((el) => el.getAttribute('data-test-index'));
  return s.length > 0 && s.every((v) => v === String(i));
}"""
# Click dot ``index``; resolve with the milliseconds until each panel shows it. The panels are
# checked once per animation frame (when the browser would paint), not on every DOM mutation:
# the check reads layout, and forcing a layout per mutation slowed the page it measured.
TIMED_CLICK = """(index) => new Promise((resolve) => {
  const PANEL_ = PANEL;
  const checks = CHECKS;
  const seen = {};
  const dot = document.querySelectorAll('.hv-main path.dot')[index];
  const start = performance.now();
  const frame = () => {
    const t = performance.now() - start;
    for (const [name, shows] of Object.entries(checks)) if (!(name in seen) && shows(index)) seen[name] = t;
    if (Object.keys(seen).length === Object.keys(checks).length) resolve(seen);
    else requestAnimationFrame(frame);
  };
  dot.dispatchEvent(new MouseEvent('click', {bubbles: true}));
  requestAnimationFrame(frame);
})""".replace("CHECKS", PANEL_CHECKS.replace("PANEL(", "PANEL_(")).replace("PANEL;", PANEL + ";")


def server_side(demo: str, clicks: int) -> dict[str, float]:
    """Median seconds: explorer construction, and one selection (what a click runs in the kernel)."""
    start = time.perf_counter()
    explorer = demo_explorer(demo)
    build = time.perf_counter() - start
    n = explorer.results.n_test
    rng = np.random.default_rng(0)
    indices = [int(i) for i in rng.integers(0, n, clicks)]
    times, cpu_times = [], []
    for i in indices:
        if i == explorer.state.index:
            i = (i + 1) % n
        start, cpu = time.perf_counter(), time.process_time()
        explorer.main.points.selected = np.array([i])
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    toggles = []
    for kind in ["relatif", "influence"] * 5:
        start = time.perf_counter()
        explorer.state.kind = kind
        toggles.append(time.perf_counter() - start)
    on_demand = []  # the alternative design: query the toolbox when the point is clicked
    demo_data = load_demo(demo, progress=False)
    tb, X, y = demo_data.toolbox, demo_data.X_test, demo_data.y_test
    for i in indices[:5]:
        start = time.perf_counter()
        tb.predict(X[i : i + 1])
        tb.influence(X[i : i + 1], y[i : i + 1])
        tb.relatif(X[i : i + 1], y[i : i + 1])
        tb.uncertainty(X[i : i + 1], y[i : i + 1], n_resamples=200, seed=0)
        tb.extrapolation(X[i : i + 1])
        on_demand.append(time.perf_counter() - start)
    return {
        "on_demand": statistics.median(on_demand),
        "build": build,
        "click": statistics.median(times),
        "click_cpu": statistics.median(cpu_times),
        "toggle": statistics.median(toggles),
        "n_test": n,
        "n_train": explorer.results.n_train,
    }


def start_voila(demo: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        cli.voila_command(cli.app_notebook(), port, open_browser=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=dict(
            os.environ,
            HESSVIEW_DEMO=demo,
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        ),
    )


def wait_for_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "voila/static/", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def browser(demo: str, clicks: int, starts: int) -> dict:
    """Seconds: cold starts to first interactive render (with their phases), click-to-updated-panels."""
    from playwright.sync_api import sync_playwright

    cold, phases, latencies, per_panel = [], [], [], []
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        for attempt in range(starts):
            port = cli.free_port(20866)
            url = f"http://127.0.0.1:{port}/"
            start = time.perf_counter()
            server = start_voila(demo, port)
            try:
                wait_for_http(url)
                serving = time.perf_counter() - start
                page = chromium.new_page(viewport={"width": 1400, "height": 1700})
                page.goto(url, timeout=180_000)  # Voila answers once the notebook has run
                executed = time.perf_counter() - start
                page.wait_for_selector(".hv-main path.dot", timeout=180_000)
                drawn = time.perf_counter() - start
                # the explorer opens on its most informative test point and names it in .hv-opening
                page.wait_for_selector(".hv-opening [data-test-index]", timeout=60_000)
                opened = int(page.locator(".hv-opening [data-test-index]").get_attribute("data-test-index"))
                page.wait_for_function(ALL_PANELS_SHOW, arg=opened, timeout=60_000)
                cold.append(time.perf_counter() - start)
                phases.append(
                    {
                        "voila serving": serving,
                        "notebook run (page loaded)": executed,
                        "main view drawn": drawn,
                        "every panel filled": cold[-1],
                    }
                )
                if attempt == 0 and clicks > 0:
                    n = page.locator(".hv-main path.dot").count()
                    rng = np.random.default_rng(1)
                    previous = opened
                    for i in (int(i) for i in rng.integers(0, n, clicks)):
                        if i == previous:
                            i = (i + 1) % n
                        seen = page.evaluate(TIMED_CLICK, i)
                        per_panel.append(seen)
                        latencies.append(max(seen.values()) / 1000)
                        previous = i
                page.close()
            finally:
                server.terminate()
                server.wait(timeout=30)
        chromium.close()
    return {
        "latencies": latencies,
        "cold_start": statistics.median(cold),
        "cold_starts": cold,
        "cold_phases": {name: statistics.median(p[name] for p in phases) for name in phases[0]},
        "latency": statistics.median(latencies) if latencies else float("nan"),
        "latency_p90": float(np.quantile(latencies, 0.9)) if latencies else float("nan"),
        "panels": {name: statistics.median(p[name] for p in per_panel) / 1000 for name in per_panel[0]}
        if per_panel
        else {},
    }


def landscape_cold_start(starts: int) -> list[float]:
    """Seconds from launching ``hessview app landscape`` (landscapes cached) to every tree drawn."""
    from playwright.sync_api import sync_playwright

    from hessview.app.landscape_demo import LANDSCAPES, build

    build(progress=True)  # cached before anything is timed
    selector = ".hv-landscape-{} .hv-landscape-graph path.dot"
    times = []
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        for _ in range(starts):
            port = cli.free_port(20866)
            url = f"http://127.0.0.1:{port}/"
            start = time.perf_counter()
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hessview.app.cli",
                    "app",
                    "landscape",
                    "--no-browser",
                    "--port",
                    str(port),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=ROOT,
                env=dict(
                    os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
                ),
            )
            try:
                wait_for_http(url)
                page = chromium.new_page(viewport={"width": 1280, "height": 800})
                page.goto(url, timeout=180_000)
                for name in LANDSCAPES:
                    page.wait_for_selector(selector.format(name), state="attached", timeout=180_000)
                times.append(time.perf_counter() - start)
                page.close()
            finally:
                server.terminate()
                server.wait(timeout=30)
        chromium.close()
    return times


def summarise(path: str) -> None:
    """Print, per demo and label, the pooled medians of runs appended with ``--json``."""
    groups: dict[tuple[str, str], dict] = {}
    for line in Path(path).read_text().splitlines():
        run = json.loads(line)
        group = groups.setdefault((run["demo"], run["label"]), {"latencies": [], "cold": [], "load": []})
        group["latencies"] += run["latencies"]
        group["cold"] += run["cold_starts"]
        group["load"].append(run["load"])
    print("| demo | label | runs | clicks | click median | click p90 | starts | cold start | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (demo, label), g in groups.items():
        clicks = g["latencies"]
        median = f"{statistics.median(clicks) * 1000:.0f} ms" if clicks else ""
        p90 = f"{np.quantile(clicks, 0.9) * 1000:.0f} ms" if clicks else ""
        loads = [load[0] for load in g["load"]]
        print(
            f"| {demo} | {label} | {len(g['load'])} | {len(clicks)} | {median} | {p90} | {len(g['cold'])} | "
            f"{statistics.median(g['cold']):.2f} s | {min(loads):.1f} to {max(loads):.1f} |"
        )


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="fermi-hubbard", choices=cli.DEMOS)
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--no-server", action="store_true", help="browser timings only")
    parser.add_argument("--json", help="append this run's raw browser timings to this file")
    parser.add_argument("--label", default="", help="name of this run in --json")
    parser.add_argument("--summarise", metavar="JSONL", help="summarise runs appended with --json")
    parser.add_argument("--app", choices=["landscape"], help="time the cold start of another app instead")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    if args.app == "landscape":
        load = load_average()
        times = landscape_cold_start(args.starts)
        print(
            f"landscape app: cold start to every disconnectivity graph drawn, median of {len(times)}: "
            f"{statistics.median(times):.2f} s ({', '.join(f'{t:.2f}' for t in times)}); "
            f"load at start {load}, "
            f"at the end {load_average()}"
        )
        return
    if args.no_server:
        load = os.getloadavg()
        seen = browser(args.demo, args.clicks, args.starts)
        print(
            f"{args.label or args.demo}: click median {seen['latency'] * 1000:.0f} ms, cold start "
            + ", ".join(f"{c:.2f}" for c in seen["cold_starts"])
            + f" s; load {load[0]:.2f}"
        )
        if args.json:
            with open(args.json, "a") as handle:
                record = {key: seen[key] for key in ("latencies", "cold_starts", "cold_phases", "panels")}
                handle.write(json.dumps(dict(record, demo=args.demo, label=args.label, load=load)) + "\n")
        return

    load_demo(args.demo, progress=True)  # caches present before anything is timed
    load_before = load_average()
    server = server_side(args.demo, args.clicks)
    print(
        f"demo {args.demo}: {server['n_test']} test points, {server['n_train']} training points; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average (1, 5, 15 min) at start {load_before}"
    )
    rows = [
        ("server-side time per click (median, wall clock)", server["click"], 0.020),
        ("server-side time per click (median, CPU time of the kernel process)", server["click_cpu"], 0.020),
        ("server-side influence/RelatIF toggle (median)", server["toggle"], 0.020),
        (
            "baseline: the same numbers queried from the toolbox per click (median)",
            server["on_demand"],
            0.020,
        ),
        (
            "explorer construction as in the app (cached results, no model or toolbox loaded)",
            server["build"],
            None,
        ),
    ]
    if not args.no_browser:
        seen = browser(args.demo, args.clicks, args.starts)
        rows += [
            ("browser click to all panels updated (median)", seen["latency"], 0.200),
            ("browser click to all panels updated (90th percentile)", seen["latency_p90"], 0.200),
            (f"cold start to first interactive render (median of {args.starts})", seen["cold_start"], 10.0),
        ]
    print("\n| measure | value | goal | value / goal |\n|---|---|---|---|")
    for name, value, goal in rows:
        shown = f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
        goal_text = "" if goal is None else (f"{goal * 1000:.0f} ms" if goal < 1 else f"{goal:.0f} s")
        ratio = "" if goal is None else f"{value / goal:.2f}"
        print(f"| {name} | {shown} | {goal_text} | {ratio} |")
    if not args.no_browser:
        print(
            "\nMedian ms from the click until each panel shows the clicked point: "
            + ", ".join(f"{k} {v * 1000:.0f}" for k, v in seen["panels"].items())
        )
        print(
            "Cold starts (s): "
            + ", ".join(f"{c:.2f}" for c in seen["cold_starts"])
            + "; median s since launching Voila: "
            + ", ".join(f"{k} {v:.2f}" for k, v in seen["cold_phases"].items())
        )
    print(f"Load average at the end: {load_average()}")
    print(
        f"\nOn-demand queries / precomputed click = {server['on_demand'] / server['click']:.0f} "
        "(same process, same points)."
    )


if __name__ == "__main__":
    main()
