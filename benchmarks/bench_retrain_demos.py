"""Retrain the demos from scratch and compare with the weights shipped in the package (or ship new ones).

Run:  .venv/bin/python benchmarks/bench_retrain_demos.py [NAME ...] [--ship | --tune] [--threads N]

For every demo (default: all) and in a fresh temporary cache (the data sets are generated once and
shared between the two builds), side by side:

1. ``load_demo(name)`` with the shipped weights: data, Hessian, save (what ``hessview build`` does);
2. ``load_demo(name, retrain=True)``: the same with training from scratch
   (``hessview build --retrain NAME``),

then :func:`hessview.app.demos.compare_with_shipped` says how closely the retrained model reproduces the
shipped one.  Results go to ``benchmarks/results/retrain.md``.  With ``--ship`` the retrained weights
replace the shipped ones (``hessview/models/data/<name>.safetensors`` and its record in
``demo-weights.json``: settings, seed, commit, versions, final gradient norm, stationarity, spectrum,
accuracies, the command); this is how the shipped weights were made.  Every retraining build also
tunes the damping (``HessianToolbox.tune_damping`` with :func:`hessview.app.demos.tuning_arguments`)
and the record keeps it, so that building from the shipped weights retrains nothing; ``--tune`` keeps
the shipped weights and tunes their damping again.  The retraining is not part of the
test suite: it takes minutes per demo.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "hessview"], cwd=ROOT).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def record_of(demo, settings: dict, seconds: float, threads: int, commit: str) -> dict:
    """How the model of ``demo`` was made and what it reached (the shipped record)."""
    tb = demo.toolbox
    test_accuracy = float((tb.predict(demo.X_test).argmax(1) == demo.y_test).mean())
    return {
        "settings": settings,
        "architecture": type(demo.model).__name__,
        "seed": settings["seed"],
        "commit": commit,
        "command": f"python benchmarks/bench_retrain_demos.py {demo.name} --ship --threads {threads}",
        "made": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "torch_threads": threads,
        },
        "objective": demo.report["loss"],
        "gradient_norm": tb.gradient_norm_,
        "median_sample_gradient_norm": tb.median_sample_gradient_norm_,
        "stationarity_ratio": tb.stationarity_ratio_,
        "lambda_min": tb.lambda_min_,
        "lambda_max": tb.lambda_max_,
        "damping": tb.damping_,
        "train_accuracy": demo.report["train_accuracy"],
        "test_accuracy": test_accuracy,
        "n_train": tb.n_train,
        "n_params": tb.n_params,
        "training_seconds_with_hessian": round(seconds, 1),
        "tuned_damping": demo.report.get("tuned_damping"),
    }


def main() -> None:
    from hessview.app import demos
    from hessview.models.shipped import ship_weights

    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", default=list(demos.DEMO_SETTINGS))
    parser.add_argument("--ship", action="store_true", help="write the retrained weights into the package")
    parser.add_argument(
        "--tune",
        action="store_true",
        help="keep the shipped weights and only tune their damping again (written into the record)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commit = git_commit()  # the code the models are trained with, read before anything else runs
    os.environ["HESSVIEW_CACHE_DIR"] = tempfile.mkdtemp(prefix="hessview-retrain-")
    rows = []
    for name in args.names:
        if args.tune:
            tune_shipped(name, commit)
            continue
        settings = demos.DEMO_SETTINGS[name]
        shipped_seconds = None
        if not args.ship:
            demos.load_demo(name, progress=False, rebuild=True)  # data generated here, shared below
            start = time.perf_counter()
            demos.load_demo(name, progress=False, rebuild=True)
            shipped_seconds = time.perf_counter() - start
        start = time.perf_counter()
        demo = demos.load_demo(name, progress=True, retrain=True)
        retrain_seconds = time.perf_counter() - start
        if args.ship:
            record = record_of(demo, settings, retrain_seconds, args.threads, commit)
            path = ship_weights(name, demo.model, record)
            print(f"shipped {path} ({path.stat().st_size} bytes)", flush=True)
            continue
        comparison = demos.compare_with_shipped(demo)
        rows.append((name, shipped_seconds, retrain_seconds, comparison))
        print(f"{name}: {shipped_seconds:.1f} s shipped, {retrain_seconds:.1f} s retrained", comparison)
    if rows:
        write_results(rows, args.threads)


def tune_shipped(name: str, commit: str) -> None:
    """Tune the damping of the shipped weights of demo ``name`` again and store it in their record."""
    from hessview.app import demos
    from hessview.models.shipped import ship_weights, shipped_record

    record = shipped_record(name)
    if record is None or record["settings"] != demos.DEMO_SETTINGS[name]:
        raise SystemExit(f"{name}: no shipped weights with the current settings; ship them first (--ship)")
    demo = demos.load_demo(name, progress=False, rebuild=True)
    arguments = demos.tuning_arguments(demo.toolbox.n_train)
    start = time.perf_counter()
    demo.toolbox.tune_damping(**arguments, max_seconds=3600.0)
    seconds = time.perf_counter() - start
    tuned = demos.tuned_damping_record(demo.toolbox, arguments)
    record = {
        **record,
        "tuned_damping": {**tuned, "commit": commit, "seconds": round(seconds, 1)},
        "damping": tuned["damping"],
    }
    ship_weights(name, demo.model, record)  # writes the file's SHA-256 into the record anew
    print(f"{name}: tuned damping {tuned['damping']:.3g}, hold-out LDS {tuned['tuned_lds']:.3f}", flush=True)
    print(tuned["reason"], flush=True)


def write_results(rows, threads: int) -> None:
    """Write ``benchmarks/results/retrain.md``."""
    lines = [
        "## Demo builds: shipped weights vs retraining from scratch",
        "",
        f"Command: `python benchmarks/bench_retrain_demos.py {' '.join(r[0] for r in rows)}"
        f" --threads {threads}`"
        f" (torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} cores, shared).",
        "Each demo is built twice in one fresh cache after its data exist: with the shipped weights "
        "(`hessview build`: Hessian and save) and with `retrain=True` (`hessview build --retrain`: training "
        "from scratch, then the same). The retrained model is then compared with the shipped one on the "
        "demo's test set: largest difference of a class probability, equal predictions, top-10 overlap of "
        "the most helpful and most harmful training points (influence on the test loss), largest influence "
        "difference relative to the largest |influence|, relative parameter distance.",
        "",
        "| demo | build, shipped (s) | build, retrained (s) | ratio | max dp | same label | top-10 overlap "
        "mean / min | rel. influence diff | rel. parameter dist |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, shipped, retrained, c in rows:
        lines.append(
            f"| {name} | {shipped:.1f} | {retrained:.1f} | {retrained / shipped:.1f}x | "
            f"{c['max_probability_difference']:.2g} | {c['same_prediction']:.3f} | "
            f"{c['top10_overlap_mean']:.3f} / {c['top10_overlap_min']:.2f} | "
            f"{c['influence_relative_difference']:.2g} | {c['parameter_relative_distance']:.2g} |"
        )
    (ROOT / "benchmarks" / "results" / "retrain.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
