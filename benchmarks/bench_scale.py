"""Scale benchmark: low-rank influence for an Ising CNN (>= 100k parameters, >= 10k configurations).

hessview (``HessianToolbox(method="auto")``, which picks ``"lowrank"`` here) against pyDVL's
``ArnoldiInfluence`` on the same float64 model and data: both find the top-``rank`` Hessian eigenpairs by
ARPACK Lanczos from Hessian-vector products over the training set, then score 100 test points against
every training point. Each tool runs in its own child process (so each peak RSS is its own), alternating
``--repeats`` times; the parent prints a JSON record of medians (and writes it to ``--out``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py --threads 1

Data: ``hessview.datasets.ising_2d`` Monte Carlo configurations (16 x 16, 20 temperatures in [1, 3.5],
label = ordered) when it is importable, else synthetic +-1 lattices (``--data synthetic``): each lattice
draws a bias ``p ~ U(0, 1)`` and spins are +1 with probability ``p``; label = ``|magnetisation| > 0.4``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class IsingCNN(nn.Module):
    """A 3x3 periodic convolution, max-pool and a two-layer head: 103,082 parameters for 16 x 16 lattices.

    Most parameters sit in the dense head, so that one pass over 10k lattices stays cheap on two cores.
    """

    def __init__(self, L: int = 16, channels: int = 8, hidden: int = 200):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, padding_mode="circular"),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(channels * (L // 2) ** 2, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x):
        return self.body(x.unsqueeze(1))


def make_data(kind: str, n_train: int, n_test: int, L: int, seed: int):
    n = n_train + n_test
    if kind in ("auto", "ising"):
        try:
            from hessview.datasets import ising_2d
        except ImportError:
            if kind == "ising":
                raise
        else:
            n_T = 20
            data = ising_2d(np.linspace(1.0, 3.5, n_T), L=L, n_per_T=-(-n // n_T), seed=seed, progress=False)
            order = np.random.default_rng(seed).permutation(len(data.y))[:n]
            return "ising_2d (Metropolis Monte Carlo)", data.X[order], data.y[order]
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, size=(n, 1, 1))
    X = np.where(rng.uniform(size=(n, L, L)) < p, 1.0, -1.0)
    y = (np.abs(X.mean(axis=(1, 2))) > 0.4).astype(np.int64)
    return "synthetic (biased random spins, label |m| > 0.4)", X, y


def prepare(args, workdir: Path) -> dict:
    """Make the data, train the CNN (Adam, float32), store both for the child processes."""
    torch.manual_seed(args.seed)
    source, X, y = make_data(args.data, args.n_train, args.n_test, args.L, args.seed)
    model = IsingCNN(args.L)
    Xt, yt = torch.tensor(X[: args.n_train], dtype=torch.float32), torch.tensor(y[: args.n_train])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0.0)
    start = time.perf_counter()
    for _ in range(args.epochs):
        for idx in torch.randperm(args.n_train).split(128):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(Xt[idx]), yt[idx])
            loss = loss + args.weight_decay / 2 * sum((p**2).sum() for p in model.parameters())
            loss.backward()
            opt.step()
    train_s = time.perf_counter() - start
    with torch.no_grad():
        accuracy = float(
            (
                model(torch.tensor(X[args.n_train :], dtype=torch.float32)).argmax(1).numpy()
                == y[args.n_train :]
            ).mean()
        )
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(workdir / "model.safetensors"))
    np.savez(workdir / "data.npz", X=X, y=y)
    n_params = sum(p.numel() for p in model.parameters())
    return {"data": source, "train_s": train_s, "test_accuracy": accuracy, "n_params": n_params}


def load(args, workdir: Path):
    from safetensors.torch import load_file

    model = IsingCNN(args.L)
    model.load_state_dict(load_file(str(workdir / "model.safetensors")))
    model = model.double().eval()
    with np.load(workdir / "data.npz", allow_pickle=False) as f:
        X, y = torch.tensor(f["X"], dtype=torch.float64), torch.tensor(f["y"])
    n = args.n_train
    return model, X[:n], y[:n], X[n:], y[n:]


class Timer:
    """Wall-clock and CPU seconds (this process, all threads) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_hessview(args, workdir: Path) -> dict:
    from hessview import HessianToolbox

    model, X, y, X_test, y_test = load(args, workdir)
    import warnings

    products = {"count": 0, "cpu_s": 0.0}
    matmat = HessianToolbox.curvature_matmat

    def counted(self, M):  # the Lanczos products: how many, and their share of the fit's CPU time
        start = time.process_time()
        out = matmat(self, M)
        products["count"] += M.shape[1]
        products["cpu_s"] += time.process_time() - start
        return out

    HessianToolbox.curvature_matmat = counted
    with Timer() as fit, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Adam does not reach a tight minimum: the benchmark times the work
        tb = HessianToolbox(
            model, X, y, weight_decay=args.weight_decay, method="auto", rank=args.rank, progress=False
        ).fit()
    with Timer() as query:
        influence = tb.influence(X_test, y_test)
    np.save(workdir / "hessview_influence.npy", influence)
    return {
        **timings(fit, query, products),
        "lanczos_cpu_s": products["cpu_s"],
        "method": tb.method_,
        "method_reason": tb.method_reason_,
        "damping": tb.damping_,
        "eigenvalues": tb.eigenvalues.tolist(),
        "kept_train_gradients": "_train_gradients" in tb.__dict__,
        "summary": tb.summary(),
    }


def timings(fit: Timer, query: Timer, products: dict) -> dict:
    """Wall and CPU seconds of the fit and the influence query, and the Lanczos product count."""
    return {
        "fit_s": fit.wall,
        "influence_s": query.wall,
        "fit_cpu_s": fit.cpu,
        "influence_cpu_s": query.cpu,
        "lanczos_products": products["count"],
    }


def run_pydvl(args, workdir: Path, regularization: float) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    import scipy.sparse.linalg as sla
    from pydvl.influence.torch import ArnoldiInfluence
    from torch.utils.data import DataLoader, TensorDataset

    model, X, y, X_test, y_test = load(args, workdir)
    loader = DataLoader(TensorDataset(X, y), batch_size=args.batch_size)
    products = {"count": 0}
    eigsh = sla.eigsh

    def counted_eigsh(A, *a, **kw):  # pyDVL imports eigsh at call time: count its Lanczos products
        def matvec(x):
            products["count"] += 1
            return A.matvec(x)

        return eigsh(sla.LinearOperator(A.shape, matvec=matvec, dtype=np.float64), *a, **kw)

    sla.eigsh = counted_eigsh
    with Timer() as fit:
        infl = ArnoldiInfluence(
            model, nn.functional.cross_entropy, regularization=regularization, rank=args.rank, tol=1e-6
        ).fit(loader)
    with Timer() as query:
        values = []
        for i in range(0, len(X), args.batch_size):
            batch = X[i : i + args.batch_size], y[i : i + args.batch_size]
            values.append(infl.influences(X_test, y_test, *batch))
        influence = torch.cat(values, dim=1).detach().numpy()
    np.save(workdir / "pydvl_influence.npy", influence)
    return timings(fit, query, products)


def child(args) -> None:
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    if args.phase == "prepare":
        record = prepare(args, workdir)
    elif args.phase == "hessview":
        record = run_hessview(args, workdir)
    else:
        record = run_pydvl(args, workdir, args.regularization)
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(record))


def spawn(args, phase: str, workdir: Path, **extra) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--workdir", str(workdir)]
    for key in (
        "n_train",
        "n_test",
        "rank",
        "threads",
        "epochs",
        "weight_decay",
        "batch_size",
        "L",
        "seed",
        "data",
    ):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(HERE.parent)}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{phase} failed:\n{out.stderr[-4000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--L", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=("auto", "ising", "synthetic"), default="auto")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the record to this JSON file")
    parser.add_argument("--phase", choices=("prepare", "hessview", "pydvl"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--regularization", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepared = spawn(args, "prepare", workdir)
        print("prepared:", prepared, flush=True)
        runs = {"hessview": [], "pydvl": []}
        for _ in range(args.repeats):
            hv = spawn(args, "hessview", workdir)
            print(
                "hessview:", {k: v for k, v in hv.items() if k not in ("eigenvalues", "summary")}, flush=True
            )
            runs["hessview"].append(hv)
            reg = args.weight_decay + hv["damping"]
            pd = spawn(args, "pydvl", workdir, regularization=reg)
            print("pydvl:", pd, flush=True)
            runs["pydvl"].append(pd)
        ours = np.load(workdir / "hessview_influence.npy")
        theirs = np.load(workdir / "pydvl_influence.npy")
    record = {"args": {k: v for k, v in vars(args).items() if k not in ("phase", "workdir")}, **prepared}
    for tool, rs in runs.items():
        for key in ("fit_s", "influence_s", "fit_cpu_s", "influence_cpu_s", "peak_rss_mb"):
            record[f"{tool}_{key}"] = float(np.median([r[key] for r in rs]))
        record[f"{tool}_total_s"] = float(np.median([r["fit_s"] + r["influence_s"] for r in rs]))
        record[f"{tool}_total_cpu_s"] = float(np.median([r["fit_cpu_s"] + r["influence_cpu_s"] for r in rs]))
    record["ratio_total_pydvl_over_hessview"] = record["pydvl_total_s"] / record["hessview_total_s"]
    record["ratio_cpu_pydvl_over_hessview"] = record["pydvl_total_cpu_s"] / record["hessview_total_cpu_s"]
    record["load_average_1min_at_end"] = os.getloadavg()[0]
    # hessview: (1/n) g^T (H + delta)^-1 g with the complement term; pyDVL: top-rank part only, no 1/n
    record["pearson_hessview_vs_pydvl"] = pearson(ours, theirs)
    record["hessview"] = runs["hessview"][-1]
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "hessview"}, indent=2))


if __name__ == "__main__":
    main()
