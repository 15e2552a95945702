"""Every public query of the engine on a GPU against the same query on the CPU (a check, not a unit test).

The unit suite runs its device grid (tests/test_engine_grid.py, tests/test_dense.py) on CUDA only where a GPU
exists; this script covers the rest of the public surface on one small trained problem, in float64: exact
(Hessian and GGN), low-rank and CG fits, influence (loss and margin), RelatIF, stability, RUE,
extrapolation, retraining, group effects, LDS, damping tuning, save and load. Each row is the largest
relative difference between the CPU and the GPU result; a row fails above ``--rtol``.

Run: ``PYTHONPATH=. python benchmarks/device_check.py [--device cuda] [--rtol 1e-6]`` (exit status 1 when a
row fails); the figures of the last run are in benchmarks/RESULTS.md ("Device check").
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hessview import HessianToolbox
from hessview.evaluation import lds
from hessview.models import train


def problem(seed: int = 0):
    """A 64-7-10 tanh MLP on 300 scikit-learn digits (weight decay 1e-2), trained on the CPU in float64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    X = torch.tensor(data.data[order] / 16.0, dtype=torch.float64)
    y = torch.tensor(data.target[order], dtype=torch.long)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 7), nn.Tanh(), nn.Linear(7, 10)).double()
    train(model, X[:300], y[:300], weight_decay=1e-2, progress=False)
    return model, X[:300], y[:300], X[300:320], y[300:320]


def as_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, nn.Module):
        return torch.cat([p.detach().cpu().reshape(-1) for p in value.parameters()]).numpy()
    return np.asarray(value, dtype=np.float64)


def relative(a, b) -> float:
    a, b = as_array(a), as_array(b)
    if a.shape != b.shape:
        return float("inf")
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale


def queries(model, X, y, X_test, y_test, device: str, tmp: Path) -> dict[str, object]:
    """Every query's result on ``device`` (numpy arrays or modules), keyed by a row label."""
    on = copy.deepcopy(model).to(device)
    X, y, X_test, y_test = X.to(device), y.to(device), X_test.to(device), y_test.to(device)
    out: dict[str, object] = {}
    tb = HessianToolbox(on, X, y, weight_decay=1e-2, progress=False).fit()
    out["exact: eigenvalues"] = tb.eigenvalues
    out["exact: influence (loss)"] = tb.influence(X_test, y_test)
    out["exact: influence (margin)"] = tb.influence(X_test, measurement="margin")
    out["exact: influence, CG solver"] = tb.influence(X_test, y_test, solver="cg", tol=1e-10)
    out["exact: RelatIF"] = tb.relatif(X_test, y_test)
    out["exact: influence stability"] = tb.influence_stability(X_test, y_test)
    out["exact: RUE predictive std"] = tb.uncertainty(X_test, n_resamples=50).std
    out["exact: extrapolation score"] = tb.extrapolation(X_test).score
    remove = np.arange(10)
    out["retrain without 10"] = tb.retrain(remove)
    out["group influence (order 2)"] = tb.group_influence(X_test, y_test, remove=remove)
    out["group influence (order 1)"] = tb.group_influence(X_test, y_test, remove=remove, order=1)
    out["actual effect"] = tb.actual_effect(X_test, y_test, remove=remove)
    result = lds(tb, X_test, y_test, n_subsets=6, progress=False)
    out["LDS per test point"] = result.per_test
    tuned = copy.deepcopy(tb).tune_damping(n_subsets=8, grid=[0.0, 1e-3, 1e-2])
    out["tune_damping: chosen damping"] = np.array([tuned.damping_])
    path = tb.save(tmp / f"{device}.safetensors")
    loaded = HessianToolbox.load(path, on, progress=False)
    out["save/load: influence"] = loaded.influence(X_test, y_test)
    ggn = HessianToolbox(on, X, y, weight_decay=1e-2, curvature="ggn", progress=False).fit()
    out["GGN: influence"] = ggn.influence(X_test, y_test)
    low = HessianToolbox(
        on, X, y, weight_decay=1e-2, method="lowrank", rank=20, lanczos_tol=0, progress=False
    )
    out["low rank: eigenvalues"] = low.fit().eigenvalues
    out["low rank: influence"] = low.influence(X_test, y_test)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rtol", type=float, default=1e-6)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}); nothing checked")
        return 2
    model, X, y, X_test, y_test = problem()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cpu = queries(model, X, y, X_test, y_test, "cpu", Path(tmp))
        cpu_s = time.perf_counter() - started
        try:
            started = time.perf_counter()
            gpu = queries(model, X, y, X_test, y_test, args.device, Path(tmp))
            gpu_s = time.perf_counter() - started
        except Exception:
            traceback.print_exc()
            return 1
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"torch {torch.__version__}, {name}; all queries: CPU {cpu_s:.1f} s, {args.device} {gpu_s:.1f} s\n")
    print(f"| query | max relative difference, {args.device} vs CPU | within {args.rtol:g} |")
    print("|---|---|---|")
    failed = 0
    for label, value in cpu.items():
        error = relative(gpu[label], value)
        ok = error <= args.rtol
        failed += not ok
        print(f"| {label} | {error:.1e} | {'yes' if ok else 'NO'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
