"""The equivalence grid: method x curvature x query x set_damping x save/load (x device where a GPU exists).

Every expected value is built from plain torch (tests/oracle.py): the curvature by autograd or per-sample
Jacobians, the inverse by ``torch.linalg.solve`` (exact) or by the low-rank formula from ``eigh`` (low
rank), gradients by per-sample autograd loops.
"""

import copy
import itertools

import numpy as np
import pytest
import torch
from oracle import as_function, blobs, ggn, hessian, margin_gradients, per_sample_gradients, train
from support import fit_checked
from torch import nn

from hessview import HessianToolbox

WD, DAMPING, NEW_DAMPING, RANK = 1e-2, 0.05, 0.2, 8
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def problem():
    X, y = blobs(40, 2, seed=0, separation=0.8)
    torch.manual_seed(0)
    model = train(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)), X, y, WD)
    return model, X, y


def oracle_inverse(C, delta, method):
    P = C.shape[0]
    eye = torch.eye(P, dtype=torch.float64)
    if method == "exact":
        return torch.linalg.inv(C + delta * eye)
    lam, V = torch.linalg.eigh(C)
    top = torch.argsort(lam.abs(), descending=True)[:RANK]
    lam, V = lam[top], V[:, top]
    return V @ torch.diag(1 / (lam + delta)) @ V.T + (eye - V @ V.T) / (WD + delta)


CASES = list(
    itertools.product(["exact", "lowrank"], ["hessian", "ggn"], [False, True], [False, True], DEVICES)
)


@pytest.mark.parametrize(("method", "curvature", "change_damping", "reload", "device"), CASES)
def test_queries_equal_the_plain_torch_oracle(
    problem, tmp_path, method, curvature, change_damping, reload, device
):
    model, X, y = problem
    f, theta = as_function(model)
    C = (hessian if curvature == "hessian" else ggn)(f, theta, X, y, WD)
    on_device = copy.deepcopy(model).to(device)  # the module-wide model stays on the CPU, whatever fails
    tb = fit_checked(
        HessianToolbox(
            on_device,
            X.to(device),
            y.to(device),
            weight_decay=WD,
            damping=DAMPING,
            method=method,
            rank=RANK,
            curvature=curvature,
            lanczos_tol=0,
            progress=False,
        )
    )
    delta = DAMPING
    if change_damping:
        tb.relatif(X[:2].to(device))  # fill the caches at the old damping
        tb.set_damping(NEW_DAMPING)
        delta = NEW_DAMPING
    if reload:
        tb = HessianToolbox.load(tb.save(tmp_path / "tb.safetensors"), on_device, progress=False)
    inverse = oracle_inverse(C, delta, method)
    G = per_sample_gradients(f, theta, X, y)
    X_test, y_test = X[:5], y[:5]
    g = per_sample_gradients(f, theta, X_test, y_test)
    n = len(X)
    rtol = 1e-7 if method == "exact" else 1e-5

    def close(actual, expected):
        np.testing.assert_allclose(
            actual, expected.numpy(), rtol=rtol, atol=1e-10 * float(expected.abs().max())
        )

    Xd, yd = X_test.to(device), y_test.to(device)
    close(tb.influence(Xd, yd), g @ inverse @ G.T / n)
    close(
        tb.influence(Xd, yd, measurement="margin"),
        -margin_gradients(f, theta, X_test, y_test) @ inverse @ G.T / n,
    )
    close(tb.relatif(Xd, yd), (g @ inverse @ G.T) / (inverse @ G.T).norm(dim=0))
    # RUE: theta_b = theta - inverse G^T (w_b - 1) / n with multinomial bootstrap counts from the seed
    weights = torch.as_tensor(
        np.random.default_rng(3).multinomial(n, np.full(n, 1 / n), size=6), dtype=torch.float64
    )
    thetas = theta - ((weights - 1) / n @ G) @ inverse
    expected = torch.stack([torch.softmax(f(t, X_test), dim=1) for t in thetas]).detach()
    close(tb.uncertainty(Xd, yd, n_resamples=6, seed=3).samples, expected)
    # local ensembles: the loss gradient at the predicted label with the top-m curvature directions removed
    m = 3
    lam, V = torch.linalg.eigh(C)
    U = V[:, torch.argsort(lam.abs(), descending=True)[:m]]
    predicted = f(theta, X_test).argmax(dim=1)
    J = per_sample_gradients(f, theta, X_test, predicted)
    close(tb.extrapolation(Xd, m=m).score, (J - J @ U @ U.T).norm(dim=1))


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_curvature_operator_products_equal_the_oracle_in_both_modes(problem, curvature):
    from hessview.engine.curvature import CurvatureOperator, DenseCurvature, ShardedCurvature

    model, X, y = problem
    f, theta = as_function(model)
    C = (hessian if curvature == "hessian" else ggn)(f, theta, X, y, WD)
    M = torch.randn(C.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kinds = {"exact": DenseCurvature, "lowrank": ShardedCurvature}
    for method, kind in kinds.items():
        tb = fit_checked(
            HessianToolbox(
                model,
                X,
                y,
                weight_decay=WD,
                damping=DAMPING,
                method=method,
                rank=RANK,
                curvature=curvature,
                progress=False,
            )
        )
        operator = tb.curvature_
        assert isinstance(operator, CurvatureOperator) and isinstance(operator, kind)
        before = operator.products
        np.testing.assert_allclose((operator @ M).numpy(), (C @ M).numpy(), rtol=1e-10, atol=1e-12)
        assert operator.products == before + 3 and operator.shape == C.shape
