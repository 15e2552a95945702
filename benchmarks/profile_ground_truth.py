"""Where hessview's time goes in the ground-truth benchmark: fit + influence of 50 test points, step by step.

The same models as ``bench_ground_truth.py``. Each step of ``HessianToolbox(...).fit()`` followed by
``influence`` is timed (CPU seconds of this process, one thread) by wrapping the engine's own functions;
medians over ``--repeats`` runs after one warm-up run. Steps: the exact Hessian (block rows of
Hessian-vector products; an input ``nn.Linear`` in Kronecker form, see ``hessview/engine/dense.py``),
per-sample training gradients, the screening of saturated samples, the stationarity check (Cholesky
certificate, the inverse ``(C + delta I)^-1`` and the ``n`` norms ``||(C + delta I)^-1 g_j||``), the
damping and the influence query; "other" is the rest (input checks, the toolbox object).

Run: ``PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/profile_ground_truth.py
[--repeats 5] [--models ising digits fh-window]``; writes ``benchmarks/results/ground_truth_profile.md``.
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import hessview.engine.distributed as distributed
import hessview.engine.toolbox as toolbox_module
from hessview import HessianToolbox
from hessview._io import atomic_path

OUT = Path(__file__).parent / "results" / "ground_truth_profile.md"

STEPS = {  # label -> (owner, attribute)
    "exact Hessian (block rows; an input Linear in Kronecker form)": (distributed.LocalBackend, "sum"),
    "per-sample gradients": (toolbox_module, "per_sample_gradients"),
    "screening": (toolbox_module.HessianToolbox, "_saturated"),
    "Cholesky certificate": (toolbox_module.HessianToolbox, "_certified_positive_definite"),
    "inverse (Cholesky, explicit)": (toolbox_module.HessianToolbox, "_make_inverse"),
    "n inverse-gradient norms": (toolbox_module.HessianToolbox, "_inverse_gradient_norms"),
    "influence query": (toolbox_module.HessianToolbox, "influence"),
}


def profile(problem, repeats: int) -> tuple[dict[str, float], int, int]:
    model, X, y, X_test, y_test, wd, _ = problem
    X, y = torch.as_tensor(X).double(), torch.as_tensor(y)
    idx = np.linspace(0, len(y_test) - 1, min(50, len(y_test))).astype(int)
    X_test, y_test = torch.as_tensor(X_test[idx]).double(), torch.as_tensor(y_test[idx])
    spent: dict[str, float] = collections.defaultdict(float)
    depth = [0]
    originals = {}

    def wrap(label, owner, name):
        function = getattr(owner, name)
        originals[label] = (owner, name, function)

        def timed(*args, **kwargs):
            depth[0] += 1
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:  # nested steps count once, in the outer one
                    spent[label] += time.process_time() - start

        setattr(owner, name, timed)

    for label, (owner, name) in STEPS.items():
        wrap(label, owner, name)
    runs = []
    try:
        for i in range(repeats + 1):
            spent.clear()
            start = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tb = HessianToolbox(model, X, y, weight_decay=wd, progress=False).fit()
                tb.influence(X_test, y_test)
            total = time.process_time() - start
            if i:
                runs.append({**spent, "total": total})
    finally:
        for owner, name, function in originals.values():
            setattr(owner, name, function)
    medians = {key: float(np.median([r.get(key, 0.0) for r in runs])) for key in [*STEPS, "total"]}
    return medians, tb.n_params, tb.n_train


def main():
    import bench_ground_truth as bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--models", nargs="+", default=["ising", "digits", "fh-window"], choices=list(bench.PROBLEMS)
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = ["| step |"]
    rule = ["|---|"]
    columns = []
    for key in args.models:
        label, make = bench.PROBLEMS[key]
        medians, P, n = profile(make(), args.repeats)
        columns.append(medians)
        header.append(f" {key} (P {P}, n {n}) CPU ms | share |")
        rule.append("---|---|")
        print(key, {k: round(v * 1000, 1) for k, v in medians.items()}, flush=True)
    lines = ["".join(header), "".join(rule)]
    for step in [*STEPS, "other", "total"]:
        cells = [f"| {step} |"]
        for medians in columns:
            value = medians["total"] - sum(medians[s] for s in STEPS) if step == "other" else medians[step]
            cells.append(f" {value * 1000:.1f} | {value / medians['total']:.0%} |")
        lines.append("".join(cells))
    command = (
        "PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/profile_ground_truth.py "
        f"--repeats {args.repeats} --models {' '.join(args.models)}"
    )
    text = (
        "## Ground truth: where hessview's fit + influence time goes\n\n`"
        + command
        + "`\n\n"
        + f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, one thread; medians of "
        f"{args.repeats} runs after a warm-up, CPU milliseconds of `HessianToolbox(...).fit()` + "
        "`influence` of 50 test points, "
        "split by the engine step that spent them (see the script's docstring).\n\n" + "\n".join(lines) + "\n"
    )
    with atomic_path(OUT) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
