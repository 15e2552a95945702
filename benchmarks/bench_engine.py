"""Engine benchmark (issue 3): the exact Hessian of the paper's 740-parameter CNN on 1000 training inputs.

Side by side in one run, on the same model, data and thread setting:
  * hessview's HessianToolbox.fit (batched HVPs + eigendecomposition + per-sample gradients),
  * (a) row-by-row double backprop, one backward pass per Hessian row (the published method),
  * (b) torch.autograd.functional.hessian(vectorize=True), where it fits in memory,
  * influence for 50 test points against pyDVL's DirectInfluence (optional: pip install pydvl zarr),
  * the whole pipeline: fit + influence + RUE + extrapolation for the 50 test points.

Times are medians of process CPU time (wall-clock medians printed too).
Weights: the paper's published ones (not a minimum, no sample saturated) or hessview's trained
"fermi-hubbard" demo model (most training samples saturated: the fit leaves them out of the Hessian).
Run:  .venv/bin/python -u benchmarks/bench_engine.py [--weights published|trained] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from hessview import HessianToolbox
from hessview.datasets import fermi_hubbard_split
from hessview.engine.hessian import available_memory
from hessview.engine.losses import per_sample_loss
from hessview.models import MinMaxScaler, load_published_weights


def timed(fn, repeats):
    """Median process CPU time (robust to other load on a shared machine) and wall time, and the result."""
    cpu, wall, result = [], [], None
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        result = fn()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    WALL.append(statistics.median(wall))
    return statistics.median(cpu), result


WALL: list[float] = []  # wall-clock medians, in the order measured, printed at the end


def data():
    train, test = fermi_hubbard_split("train"), fermi_hubbard_split("test")
    scaler = MinMaxScaler().fit(train.X)
    X = torch.tensor(scaler.transform(train.X), dtype=torch.float64)[:, None, :]
    X_test = torch.tensor(scaler.transform(test.X), dtype=torch.float64)[:, None, :]
    return X, torch.tensor(train.y), X_test, torch.tensor(test.y)


def row_by_row(model, X, y, weight_decay, n_rows=None):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = torch.nn.functional.cross_entropy(model(X), y)
    loss = loss + weight_decay / 2 * sum((p**2).sum() for p in params)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params, create_graph=True)])
    rows = [
        torch.cat([t.reshape(-1) for t in torch.autograd.grad(g[i], params, retain_graph=True)])
        for i in range(g.numel() if n_rows is None else n_rows)
    ]
    return torch.stack(rows)


def vectorized_autograd(tb, X, y):
    def objective(theta):
        out = tb.flat(theta, X)
        return per_sample_loss("cross_entropy", out, y).mean() + tb.weight_decay / 2 * theta @ theta

    return torch.autograd.functional.hessian(objective, tb.theta, vectorize=True)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", choices=("published", "trained"), default="published")
    parser.add_argument("--skip-pydvl", action="store_true", help="skip pyDVL's DirectInfluence")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=None, help="time only this many rows of (a), scaled")
    parser.add_argument("--skip-hessian-baselines", action="store_true", help="skip (a) and (b)")
    parser.add_argument(
        "--pydvl-batch", type=int, default=25, help="pyDVL's Hessian batch (1000 needs 27 GB)"
    )
    parser.add_argument(
        "--subset", type=int, default=100, help="training inputs for (b) when 1000 do not fit"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the published weights are not a stationary point; timing only
    X, y, X_test, y_test = data()
    n = len(X)
    wd = 0.05 / n
    if args.weights == "published":
        model = load_published_weights(torch.float64).eval()
    else:
        from hessview.app.demos import load_demo

        demo = load_demo("fermi-hubbard")
        assert torch.equal(demo.toolbox.X_train, X), "the demo was trained on other inputs"
        model = demo.model
    print(
        f"weights={args.weights}  threads={torch.get_num_threads()}  n_train={n}  n_test={len(X_test)}  "
        f"repeats={args.repeats}"
    )

    def make(Xs=X, ys=y):
        return HessianToolbox(model, Xs, ys, weight_decay=wd, progress=False)

    t_fit, tb = timed(lambda: make().fit(), args.repeats)
    print(
        f"hessview fit (Hessian + eigh + per-sample grads), P={tb.n_params}: {t_fit:.2f} s; Hessian over "
        f"{n - tb.n_screened_} of {n} samples (screening residual {tb.screening_residual_})"
    )

    if not args.skip_hessian_baselines:
        hessian_baselines(args, model, tb, t_fit, make, X, y, wd)
    query_benchmarks(args, model, tb, t_fit, X, y, X_test, y_test, wd)


def hessian_baselines(args, model, tb, t_fit, make, X, y, wd):
    n = len(X)
    rows = tb.n_params if args.rows is None else args.rows
    t_rows, H_rows = timed(lambda: row_by_row(model, X, y, wd, rows), 1)
    err = float((H_rows - tb.hessian[:rows]).abs().max())
    t_rows *= tb.n_params / rows
    print(
        f"(a) row-by-row double backprop ({rows} of {tb.n_params} rows timed, scaled to all): "
        f"{t_rows:.2f} s  ratio {t_rows / t_fit:.2f}x  max|diff| {err:.1e}"
    )

    need = tb.n_params * n * X[0].numel() * 8 * 8
    if need < available_memory() / 2:
        t_vec, _ = timed(lambda: vectorized_autograd(tb, X, y), 1)
        print(
            f"(b) autograd.functional.hessian(vectorize=True), n={n}: {t_vec:.2f} s  "
            f"ratio {t_vec / t_fit:.1f}x"
        )
    else:
        print(f"(b) autograd.functional.hessian(vectorize=True) at n={n} needs ~{need / 1e9:.0f} GB: skipped")
    Xs, ys = X[: args.subset], y[: args.subset]
    t_sub, tb_sub = timed(lambda: make(Xs, ys).fit(), args.repeats)
    try:
        t_vec, H_vec = timed(lambda: vectorized_autograd(tb_sub, Xs, ys), args.repeats)
    except RuntimeError as err:  # torch's vmap cannot batch every layout of nn.Conv1d's double backward
        print(f"    on the first {args.subset} inputs: vectorized autograd failed: {str(err)[:100]}")
        return
    err = float((H_vec - tb_sub.hessian).abs().max())
    print(
        f"    on the first {args.subset} inputs: hessview fit {t_sub:.2f} s, vectorized autograd "
        f"{t_vec:.2f} s  ratio {t_vec / t_sub:.1f}x  max|diff| {err:.1e}"
    )


def pydvl_benchmark(args, model, tb, t_ours, influence, X, y, X_test, y_test, wd):
    try:
        from pydvl.influence.torch import DirectInfluence
        from torch.utils.data import DataLoader, TensorDataset
    except ImportError as err:
        print(f"pyDVL DirectInfluence: not installed ({err}); pip install pydvl zarr")
        return

    def pydvl_run():
        infl = DirectInfluence(model, torch.nn.functional.cross_entropy, regularization=wd + tb.damping_)
        infl.fit(DataLoader(TensorDataset(X, y), batch_size=args.pydvl_batch))
        return infl.influences(X_test, y_test, X, y)

    t_pydvl, theirs = timed(pydvl_run, args.repeats)
    r = np.corrcoef(-theirs.detach().numpy().ravel() / len(X), influence.ravel())[0, 1]
    print(
        f"pyDVL DirectInfluence (Hessian batch {args.pydvl_batch}) fit + influence, 50 test points: "
        f"{t_pydvl:.2f} s; hessview fit + influence {t_ours:.2f} s  "
        f"ratio {t_pydvl / t_ours:.1f}x  Pearson r {r:.6f}"
    )


def query_benchmarks(args, model, tb, t_fit, X, y, X_test, y_test, wd):
    t_inf, influence = timed(lambda: tb.influence(X_test, y_test), args.repeats)
    print(f"hessview influence, 50 test points (after fit): {t_inf:.3f} s")
    if args.skip_pydvl:
        print("pyDVL DirectInfluence: skipped (--skip-pydvl)")
    else:
        pydvl_benchmark(args, model, tb, t_fit + t_inf, influence, X, y, X_test, y_test, wd)

    def queries():
        tb.influence(X_test)
        tb.relatif(X_test)
        tb.uncertainty(X_test, n_resamples=200, seed=0)
        tb._train_scores.clear()  # include calibrating the threshold on the training set
        tb.extrapolation(X_test)

    t_q, _ = timed(queries, args.repeats)
    print(f"queries after fit (influence + RelatIF + RUE(200) + extrapolation, 50 test points): {t_q:.2f} s")
    print(f"whole pipeline = fit + queries: {t_fit + t_q:.2f} s")
    print(
        "times above are median process CPU seconds; wall-clock medians in order:",
        [round(w, 2) for w in WALL],
    )


if __name__ == "__main__":
    main()
