"""Test-suite settings shared by every test folder."""

import warnings

import pytest
import torch

# Tests use small tensors: one intra-op thread avoids thread-synchronisation overhead, which on a loaded
# 2-core machine made small ops 50-100x slower. (The dev script also sets OMP_NUM_THREADS=1 for notebooks.)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fermi_hubbard_demo():
    """The flagship Fermi-Hubbard demo, built once per session (or loaded from the cache).

    It keeps the paper's settings (ReLU network, max-pooling, weight decay 0.05/n), which do not reach a
    minimum of the regularised loss: building it warns, truthfully, that theta is not stationary and that
    the automatic damping dominates most directions. The fixture asserts that the warnings raised are
    exactly those the fitted toolbox's state calls for, so every test that uses the demo starts from a
    cache and raises none.
    """
    from hessview.app.demos import load_demo
    from hessview.engine.errors import DampingWarning, HessviewWarning, NotStationaryWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HessviewWarning)
        demo = load_demo("fermi-hubbard", progress=False)
    kinds = {w.category for w in caught if issubclass(w.category, HessviewWarning)}
    for w in caught:  # anything else goes on to the suite's filters
        if not issubclass(w.category, HessviewWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if kinds:  # built now (a cached demo is loaded silently)
        tb = demo.toolbox
        assert kinds <= {NotStationaryWarning, DampingWarning}, kinds
        assert (NotStationaryWarning in kinds) == (not tb.is_stationary_)
        assert (DampingWarning in kinds) == (tb.n_damped_ > len(tb.eigenvalues) / 2)
    return demo
