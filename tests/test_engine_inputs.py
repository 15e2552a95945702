"""Inputs that used to confuse the engine get a clear error before any expensive work (or now work)."""

import numpy as np
import pytest
import torch
from oracle import blobs
from support import NOT_STATIONARY, expect_warnings
from torch import nn

from hessview import HessianToolbox


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x):
        return self.linear(x), x


class InfOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x):
        out = self.linear(x)
        return torch.where(x[:, :1] > 3.0, torch.full_like(out, float("inf")), out)


@pytest.fixture(scope="module")
def data():
    return blobs(30, 2, seed=0)


def test_meta_device_model_is_refused(data):
    X, y = data
    with torch.device("meta"):
        model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="meta device"):
        HessianToolbox(model, X, y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused(data, dtype):
    X, y = data
    with pytest.raises(TypeError, match="half precision"):
        HessianToolbox(nn.Linear(2, 2), X, y, dtype=dtype)


def test_a_forward_returning_a_tuple_is_refused(data):
    X, y = data
    with pytest.raises(TypeError, match="must return one tensor.*not tuple"):
        HessianToolbox(TupleOut(), X, y)


def test_inf_outputs_are_refused_naming_the_rows(data):
    X, y = data
    X = X.clone()
    X[7, 0] = 5.0
    with pytest.raises(ValueError, match=r"NaN or inf outputs for 1 training inputs \(first: \[7\]\)"):
        HessianToolbox(InfOut(), X, y)


def test_uint8_inputs_are_accepted_as_numbers():
    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 255, (40, 3), generator=g, dtype=torch.uint8)
    y = (X[:, 0] > 127).long()
    Xf = X.to(torch.float64)
    torch.manual_seed(0)
    net = nn.Linear(3, 2).double()
    with torch.no_grad():
        net.weight /= 255
    with expect_warnings(NOT_STATIONARY):  # untrained on purpose: the inputs' type is the subject
        a = HessianToolbox(net, X, y, weight_decay=0.1, damping=0.1, progress=False).fit()
    with expect_warnings(NOT_STATIONARY):
        b = HessianToolbox(net, Xf, y, weight_decay=0.1, damping=0.1, progress=False).fit()
    np.testing.assert_array_equal(a.influence(X[:3]), b.influence(Xf[:3]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(weight_decay="0.1"), TypeError, "weight_decay must be a number"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay must be a finite number >= 0"),
        (dict(rank=np.int64(0)), ValueError, "rank must be an integer in"),
        (dict(screen=1), TypeError, "screen must be True or False"),
        (dict(damping="none"), ValueError, "damping must be 'auto', 'tuned' or a finite number"),
        (dict(method="dense"), ValueError, r"method must be one of \('exact', 'lowrank', 'auto'\)"),
        (dict(lanczos_tol=1.0), ValueError, r"lanczos_tol must be a finite number in \[0, 1\)"),
    ],
)
def test_bad_arguments_name_the_problem(data, kwargs, error, match):
    X, y = data
    with pytest.raises(error, match=match):
        HessianToolbox(nn.Linear(2, 2), X, y, **kwargs)


def test_numpy_integers_are_accepted_where_an_int_is(data):
    X, y = data
    with expect_warnings(NOT_STATIONARY):  # untrained on purpose: the arguments' types are the subject
        tb = HessianToolbox(nn.Linear(2, 2), X, y, weight_decay=0.1, rank=np.int32(3), progress=False).fit()
    assert tb.rank == 3
    assert tb.uncertainty(X[:2], n_resamples=np.int64(5), seed=np.uint8(2)).n_resamples == 5
    assert tb.extrapolation(X[:2], m=np.int16(2)).m == 2
    assert tb.influence_stability(X[:2], k=np.int64(2)).shape == (2,)
