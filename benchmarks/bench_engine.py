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

``--hessian-speed`` (issue 11) instead times, side by side in one process with one thread, the exact Hessian
of three problems (published weights and an untrained CNN1D_tiny_ED on the training grid, published weights
on random inputs): ``fit`` now, ``fit`` with the previous dense Hessian (P vmapped products over all rows,
commit 37f50be) and row-by-row double backprop, against the floating-point limit of P Hessian-vector
products (FLOPs of one product from ``torch.utils.flop_counter`` times P, at this machine's measured float64
GEMM rate). Run:  nice -n 10 .venv/bin/python -u benchmarks/bench_engine.py --hessian-speed [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from unittest import mock

import numpy as np
import torch

from hessview import HessianToolbox
from hessview.datasets import fermi_hubbard_split
from hessview.engine.distributed import Shard, make_shards
from hessview.engine.hessian import available_memory, hessian_matmat_forward
from hessview.engine.losses import per_sample_loss
from hessview.engine.params import FlatModel
from hessview.models import CNN1D_tiny_ED, MinMaxScaler, load_published_weights


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
    parser.add_argument("--hessian-speed", action="store_true", help="the exact Hessian's speed (issue 11)")
    parser.add_argument("--n-random", type=int, default=100, help="random inputs of --hessian-speed")
    parser.add_argument(
        "--n-train", type=int, default=1000, help="training inputs of --hessian-speed (spread)"
    )
    parser.add_argument("--float32", action="store_true", help="--hessian-speed: also float32 products")
    parser.add_argument(
        "--cases", default="published,untrained,random", help="--hessian-speed problems, comma-separated"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the published weights are not a stationary point; timing only
    if args.hessian_speed:
        hessian_speed(args)
        return
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


def old_dense_curvature(self, curvature, row_chunk, progress=False):
    """``Shard.dense_curvature`` before issue 11 (commit 37f50be): P products, ``row_chunk`` rows per pass."""
    P = self.theta.numel()
    eye = torch.eye(P, dtype=self.theta.dtype, device=self.theta.device)
    rows = torch.cat(
        [self.curvature_matmat(eye[i : i + row_chunk], curvature) for i in range(0, P, row_chunk)]
    )
    return (rows + rows.T) / 2


def gemm_rate(size=2000, repeats=5):
    """Float64 GEMM FLOP/s of a ``size``-cubed matrix product: the best of ``repeats`` (CPU time)."""
    g = torch.Generator().manual_seed(0)
    A, B = (torch.randn(size, size, generator=g, dtype=torch.float64) for _ in range(2))
    A @ B  # warm up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        A @ B
        times.append(time.process_time() - start)
    return 2 * size**3 / min(times)


def counted_flops(fn):
    """Multiply-add FLOPs of matrix products and convolutions in ``fn()`` (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def product_flops(model, X, y, wd):
    """FLOPs of one more Hessian-vector product over ``X`` (vmapped jvp of grad with 2 vectors minus 1)."""
    flat = HessianToolbox(model, X, y, weight_decay=wd, progress=False).flat
    shard = Shard(flat, X, y, "cross_entropy", len(X), 0)
    eye = torch.eye(flat.n_params, dtype=torch.float64)

    def objective(theta):
        return shard._objective(theta, X, y)

    one = counted_flops(lambda: hessian_matmat_forward(objective, flat.theta, eye[:1]))
    two = counted_flops(lambda: hessian_matmat_forward(objective, flat.theta, eye[:2]))
    return two - one, shard


def speed_cases(args):
    X, y, _, _ = data()
    spread = torch.linspace(0, len(X) - 1, min(args.n_train, len(X))).round().long()
    X, y = X[spread], y[spread]
    g = torch.Generator().manual_seed(0)
    X_random = torch.rand(args.n_random, 1, X.shape[-1], generator=g, dtype=torch.float64)
    y_random = torch.randint(0, 2, (args.n_random,), generator=g)
    torch.manual_seed(0)
    untrained = CNN1D_tiny_ED().double().eval()
    published = load_published_weights(torch.float64).eval()
    cases = {
        "published": (f"published weights, {len(X)} training inputs", published, X, y),
        "untrained": (f"untrained (seed 0), {len(X)} training inputs", untrained, X, y),
        "random": (f"published weights, {args.n_random} random inputs", published, X_random, y_random),
    }
    return [cases[name] for name in args.cases.split(",")]


def hessian_speed(args):
    """Issue 11: row-by-row vs the previous fit vs fit now, and the floating-point limit of P products."""
    print(f"threads={torch.get_num_threads()} repeats={args.repeats} load average at start {os.getloadavg()}")
    rate = gemm_rate()
    print(f"float64 GEMM (2000^3, best of 5, CPU time): {rate / 1e9:.1f} GFLOP/s")
    print(
        "| problem | samples in the Hessian | row-by-row (a) | fit before | fit now | (a) / now "
        "| before / now | one product (MFLOP) | limit = P products at GEMM rate | limit / fit now "
        "| FLOPs now / P products | max rel. diff now vs (a), vs before | load average |"
    )
    print("|---" * 13 + "|")
    for label, model, X, y in speed_cases(args):
        speed_row(args, rate, label, model, X, y)


def speed_row(args, rate, label, model, X, y):
    n = len(X)
    wd = 0.05 / n

    def fit(m=n):
        return HessianToolbox(model, X[:m], y[:m], weight_decay=wd, progress=False).fit()

    fit(2)  # warm up (first calls of the transforms)
    with mock.patch.object(Shard, "dense_curvature", old_dense_curvature):
        fit(2)
    WALL.clear()
    t_new, tb = timed(fit, args.repeats)
    with mock.patch.object(Shard, "dense_curvature", old_dense_curvature):
        t_old, tb_old = timed(fit, args.repeats)
    P = tb.n_params
    rows = list(range(0, P, max(1, P // args.rows) if args.rows else 1))
    t_rows, H_rows = timed(lambda: row_by_row_rows(model, X, y, wd, rows), args.repeats)
    t_rows *= P / len(rows)
    scale = float(tb.hessian.abs().max())
    diff_rows = float((H_rows - tb.hessian[rows]).abs().max()) / scale
    diff_old = float((tb_old.hessian - tb.hessian).abs().max()) / scale
    kept = n - tb.n_screened_  # samples in the Hessian
    m = min(n, 10)  # FLOPs are counted on 10 samples and scaled to those in the Hessian
    one, shard = product_flops(model, X[:m], y[:m], wd)
    now = counted_flops(lambda: shard.dense_curvature("hessian", 128)) * kept / m
    one *= kept / m
    limit = P * one / rate
    print(
        f"| {label} | {kept} of {n} | {t_rows:.1f} s | {t_old:.1f} s | {t_new:.1f} s "
        f"| **{t_rows / t_new:.1f}x** | {t_old / t_new:.1f}x | {one / 1e6:.0f} | {limit:.1f} s "
        f"| {limit / t_new:.0%} | {now / (P * one):.2f} | {diff_rows:.0e}, {diff_old:.0e} "
        f"| {os.getloadavg()[0]:.1f} |",
        flush=True,
    )
    print(f"    wall-clock medians (now, before, row-by-row): {[round(w, 1) for w in WALL]}", flush=True)
    if args.float32:
        float32_products(args, model, X, y, tb.hessian - wd * torch.eye(P, dtype=torch.float64))


def float32_products(args, model, X, y, truth):
    """The dense Hessian (shards of 10, summed in float64) from float32 products against float64 ones."""

    def hessian(dtype):
        shards = make_shards(FlatModel(model, dtype), X.to(dtype), y, "cross_entropy", 10)
        return sum(shard.dense_curvature("hessian", 128).double() for shard in shards)

    t64, H64 = timed(lambda: hessian(torch.float64), args.repeats)
    t32, H32 = timed(lambda: hessian(torch.float32), args.repeats)
    scale = float(truth.abs().max())
    print(
        f"    Hessian alone: float64 products {t64:.1f} s, float32 products {t32:.1f} s ({t64 / t32:.2f}x); "
        f"max |H32 - H64| / max |H| = {float((H32 - truth).abs().max()) / scale:.1e} "
        f"(float64 vs fit: {float((H64 - truth).abs().max()) / scale:.0e})",
        flush=True,
    )


def row_by_row_rows(model, X, y, weight_decay, rows):
    """Rows ``rows`` of the Hessian by double backprop, one backward pass per row (the published method)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = torch.nn.functional.cross_entropy(model(X), y)
    loss = loss + weight_decay / 2 * sum((p**2).sum() for p in params)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params, create_graph=True)])
    return torch.stack(
        [
            torch.cat([t.reshape(-1) for t in torch.autograd.grad(g[i], params, retain_graph=True)])
            for i in rows
        ]
    )


if __name__ == "__main__":
    main()
