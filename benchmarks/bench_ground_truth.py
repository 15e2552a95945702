"""Linear datamodeling score (LDS) of hessview's influence variants, and of peers when installed.

Side by side in one run, on the same trained models, data, subsets and retrainings (the retrained
measurements come from ``hessview.evaluation.lds`` once per model; every method's predictions are scored
against those same measurements):

* hessview exact (automatic damping), exact with ``tune_damping`` (alpha 0.5, training data only),
  low-rank (top-20 eigenpairs), CG (exact to 1e-8), GGN curvature;
* optional peers, from a separate install (``PYTHONPATH=/tmp/gt/peers``, never a hessview dependency):
  pyDVL 0.10 ``DirectInfluence`` (regularization = weight decay + hessview's automatic damping).

Models: (a) the Ising demo's CNN (50 parameters, 600 lattices; ``hessview.app.demos``), (b) a tanh MLP
64-7-10 (535 parameters) on 400 scikit-learn digits, weight decay 1e-2. The Fermi-Hubbard CNN is left out
here (its retrainings take minutes each; see benchmarks/RESULTS.md).

Run: ``PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/bench_ground_truth.py
[--subsets 20] [--test 50] [--models ising digits]``; writes ``benchmarks/results/ground_truth.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hessview import HessianToolbox
from hessview._io import atomic_path
from hessview.engine.evaluation import SIGN, mean_score, spearman_columns
from hessview.evaluation import lds

OUT = Path(__file__).parent / "results" / "ground_truth.md"


def digits_problem(seed: int = 0):
    """A 64-7-10 tanh MLP trained to a tight minimum on 400 digits (float64); 200 held-out test digits."""
    from sklearn.datasets import load_digits

    from hessview.models import train

    data = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.target))
    X = torch.tensor(data.data[order] / 16.0, dtype=torch.float64)
    y = torch.tensor(data.target[order], dtype=torch.long)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 7), nn.Tanh(), nn.Linear(7, 10)).double()
    train(model, X[:400], y[:400], weight_decay=1e-2, progress=False)
    return model, X[:400], y[:400], X[400:600], y[400:600], 1e-2


def ising_problem():
    from hessview.app.demos import load_demo

    demo = load_demo("ising", progress=False)
    tb = demo.toolbox
    return demo.model, tb.X_train, tb.y_train, demo.X_test, demo.y_test, tb.weight_decay


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def score(influence: np.ndarray, subsets: np.ndarray, actual: np.ndarray, measurement: str) -> float:
    predicted = SIGN[measurement] * (~subsets).astype(np.float64) @ influence.T
    return mean_score(spearman_columns(predicted, actual))


def peers(model, X, y, X_test, y_test, wd, damping, reference):
    """pyDVL's DirectInfluence, when importable: (name, influence, wall, cpu, note) rows."""
    rows = []
    try:
        from pydvl.influence.torch import DirectInfluence
        from torch.utils.data import DataLoader, TensorDataset
    except Exception as error:  # not installed: said in the table
        return [("pyDVL 0.10 DirectInfluence", None, None, None, f"not run: {type(error).__name__}: {error}")]

    def run():
        loss = nn.CrossEntropyLoss()
        peer = DirectInfluence(model.double(), loss, regularization=wd + damping)
        peer.fit(DataLoader(TensorDataset(X, y), batch_size=len(y)))
        return peer.influences(X_test, y_test, X, y).detach().numpy()

    try:
        values, wall, cpu = timed(run)
        # pyDVL's sign convention: make it agree with hessview's (positive = helpful), said in the table
        sign = 1.0 if np.corrcoef(values.ravel(), reference.ravel())[0, 1] >= 0 else -1.0
        rows.append(("pyDVL 0.10 DirectInfluence", sign * values / len(y), wall, cpu, f"sign {sign:+.0f}"))
    except Exception as error:
        rows.append(
            ("pyDVL 0.10 DirectInfluence", None, None, None, f"failed: {type(error).__name__}: {error}")
        )
    rows += kronfluence_rows(model, X, y, X_test, y_test, reference)
    return rows


def kronfluence_rows(model, X, y, X_test, y_test, reference):
    """Kronfluence 1.0 EK-FAC (its default damping heuristic, every dtype float64), when importable."""
    import copy
    import tempfile

    import torch.nn.functional as F

    label = "Kronfluence 1.0 EK-FAC (default damping)"
    try:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task
        from torch.utils.data import TensorDataset
    except Exception as error:
        return [(label, None, None, None, f"not run: {type(error).__name__}: {error}")]

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, labels = batch
            return F.cross_entropy(model(inputs), labels, reduction="sum")

    def run():
        task = Classification()
        peer = prepare_model(copy.deepcopy(model).double().eval(), task)
        with tempfile.TemporaryDirectory() as folder:
            analyzer = Analyzer("gt", model=peer, task=task, output_dir=folder, disable_tqdm=True, cpu=True)
            f64 = torch.float64
            factor_args = FactorArguments(
                strategy="ekfac",
                activation_covariance_dtype=f64,
                gradient_covariance_dtype=f64,
                lambda_dtype=f64,
                eigendecomposition_dtype=f64,
            )
            analyzer.fit_all_factors(
                "f", dataset=TensorDataset(X, y), factor_args=factor_args, per_device_batch_size=len(y)
            )
            score_args = ScoreArguments(
                score_dtype=f64, per_sample_gradient_dtype=f64, precondition_dtype=f64
            )
            analyzer.compute_pairwise_scores(
                "s",
                factors_name="f",
                query_dataset=TensorDataset(torch.as_tensor(X_test), torch.as_tensor(y_test)),
                train_dataset=TensorDataset(X, y),
                per_device_query_batch_size=len(y_test),
                per_device_train_batch_size=len(y),
                score_args=score_args,
            )
            return analyzer.load_pairwise_scores("s")["all_modules"].double().numpy()

    try:
        values, wall, cpu = timed(run)
        sign = 1.0 if np.corrcoef(values.ravel(), reference.ravel())[0, 1] >= 0 else -1.0
        return [(label, sign * values, wall, cpu, f"sign {sign:+.0f} to match hessview's convention")]
    except Exception as error:
        return [(label, None, None, None, f"failed: {type(error).__name__}: {error}")]


def bench_model(name, problem, n_subsets, n_test, seed=0):
    model, X, y, X_test, y_test, wd = problem
    idx = np.linspace(0, len(y_test) - 1, min(n_test, len(y_test))).astype(int)
    X_test, y_test = torch.as_tensor(X_test[idx]), torch.as_tensor(y_test[idx])
    measurement = "loss"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact, wall, cpu = timed(lambda: HessianToolbox(model, X, y, weight_decay=wd, progress=False).fit())
        truth, t_lds, _ = timed(
            lambda: lds(exact, X_test, y_test, n_subsets=n_subsets, seed=seed, measurement=measurement)
        )
        rows = []
        infl, w2, c2 = timed(lambda: exact.influence(X_test, y_test, measurement=measurement))
        auto = exact.damping_
        rows.append(("hessview exact, automatic damping", infl, wall + w2, cpu + c2, f"damping {auto:.3g}"))
        reference = infl
        cg, w3, c3 = timed(
            lambda: exact.influence(X_test, y_test, measurement=measurement, solver="cg", tol=1e-8)
        )
        rows.append(("hessview CG (tol 1e-8)", cg, wall + w3, cpu + c3, "same fit, CG solves"))
        variants = {
            "hessview low-rank (top 20)": dict(method="lowrank", rank=min(20, exact.n_params - 1)),
            "hessview GGN": dict(curvature="ggn"),
        }
        for label, kw in variants.items():

            def fit_and_query(kw=kw):
                tb = HessianToolbox(model, X, y, weight_decay=wd, progress=False, **kw).fit()
                return tb.influence(X_test, y_test, measurement=measurement), tb.damping_

            (values, delta), w, c = timed(fit_and_query)
            rows.append((label, values, w, c, f"damping {delta:.3g}"))
        (_, tune_wall, tune_cpu) = timed(lambda: exact.tune_damping(seed=seed, measurement=measurement))
        tuned, w4, c4 = timed(lambda: exact.influence(X_test, y_test, measurement=measurement))
        rows.append(
            (
                "hessview exact, tune_damping",
                tuned,
                wall + tune_wall + w4,
                cpu + tune_cpu + c4,
                f"damping {exact.damping_:.3g} (hold-out LDS {exact.tuned_lds_:.3f})",
            )
        )
        rows += peers(model, X, y, X_test, y_test, wd, auto, reference)
    lines = [
        f"### {name}: {exact.n_params} parameters, {exact.n_train} training points, {len(idx)} test points, "
        f"{n_subsets} subsets (alpha 0.5), measurement {measurement!r}",
        "",
        f"Ground truth: {n_subsets} warm-started L-BFGS retrainings, {t_lds:.1f} s wall; largest gradient "
        f"norm reached {truth.gradient_norms.max():.2g} (tolerance {truth.tol:.2g}).",
        "",
        "| method | LDS | wall s | CPU s | note |",
        "|---|---|---|---|---|",
    ]
    for label, values, w, c, note in rows:
        if values is None:
            lines.append(f"| {label} | - | - | - | {note} |")
        else:
            s = score(values, truth.subsets, truth.actual, measurement)
            lines.append(f"| {label} | {s:.3f} | {w:.2f} | {c:.2f} | {note} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subsets", type=int, default=20)
    parser.add_argument("--test", type=int, default=50)
    parser.add_argument("--models", nargs="+", default=["ising", "digits"], choices=["ising", "digits"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    problems = {"ising": ("Ising demo CNN", ising_problem), "digits": ("MLP on digits", digits_problem)}
    sections = []
    for key in args.models:
        label, make = problems[key]
        sections.append(bench_model(label, make(), args.subsets, args.test))
        print(sections[-1], flush=True)
    command = (
        "PYTHONPATH=.:/tmp/gt/peers OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/bench_ground_truth.py "
        f"--subsets {args.subsets} --test {args.test} --models {' '.join(args.models)}"
    )
    title = "## Ground truth: LDS of influence variants (issues 12 and 14)"
    text = title + "\n\n`" + command + "`\n\n" + "\n\n".join(sections) + "\n"
    with atomic_path(OUT) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
