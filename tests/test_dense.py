"""Dense curvature by block rows (Hessian) and per-sample Jacobians (GGN) against plain torch.autograd."""

import pytest
import torch
import torch.nn.functional as F
from support import DAMPED, NOT_STATIONARY, expect_warnings
from torch import nn
from torch.func import functional_call

import hessview.engine.dense
from hessview import HessianToolbox
from hessview.engine.dense import dense_ggn, dense_hessian, parameter_groups
from hessview.engine.distributed import make_shards
from hessview.engine.losses import get_loss
from hessview.engine.params import FlatModel
from hessview.models import CNN1D_tiny_ED, load_published_weights


class PoolCNN(nn.Module):
    """Conv, max-pool, ReLU, avg-pool and a linear head (every layer type of the paper's CNN)."""

    def __init__(self, out=2):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 3, 5, padding=1)
        self.conv2 = nn.Conv1d(3, 4, 3)
        self.head = nn.Linear(4 * 3, out)

    def forward(self, x):
        x = F.relu(F.max_pool1d(self.conv1(x), 2))
        x = F.relu(F.avg_pool1d(self.conv2(x), 2))
        return self.head(x.flatten(1))


class HeadFirst(nn.Module):
    """Parameters registered in the reverse of the order they are used, one of them used twice, one frozen."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.shared = nn.Linear(4, 4, bias=False)
        self.first = nn.Linear(3, 4)
        self.first.bias.requires_grad_(False)

    def forward(self, x):
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(self.first(x))))))


def mlp(activation, out=2):
    return nn.Sequential(nn.Linear(4, 5), activation, nn.Linear(5, 3), activation, nn.Linear(3, out))


CASES = {
    "tanh-mlp-ce": (lambda: mlp(nn.Tanh(), 3), (20, 4), "cross_entropy"),
    "softplus-mlp-mse": (lambda: mlp(nn.Softplus(), 2), (20, 4), "mse"),
    "relu-mlp-ce": (lambda: mlp(nn.ReLU()), (20, 4), "cross_entropy"),
    "pool-cnn-ce": (PoolCNN, (15, 1, 20), "cross_entropy"),
    "pool-cnn-mse": (lambda: PoolCNN(3), (15, 1, 20), "mse"),
    "head-first-ce": (HeadFirst, (12, 3), "cross_entropy"),
}


def make_case(name, seed=0, cases=CASES):
    factory, shape, loss = cases[name]
    torch.manual_seed(seed)
    model = factory().double()
    X = torch.randn(*shape, dtype=torch.float64)
    if loss == "cross_entropy":
        y = torch.randint(0, model(X[:1]).shape[1], (shape[0],))
    else:
        y = torch.randn(shape[0], model(X[:1]).shape[1], dtype=torch.float64)
    return model, X, y, loss


def plain_loss(loss, outputs, y):
    if loss == "cross_entropy":
        return F.cross_entropy(outputs, y, reduction="sum")
    return ((outputs - y) ** 2).sum()


def plain_parameters(model, theta):
    """The model's trainable parameters taken from a flat vector, in ``named_parameters`` order."""
    params, start = {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            params[name] = theta[start : start + p.numel()].view(p.shape)
            start += p.numel()
    return params


def plain_theta(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def autograd_hessian(model, X, y, loss, scale=1.0):
    """Hessian of scale * sum_j L_j by torch.autograd.functional.hessian (reverse over reverse)."""
    model = model.eval()

    def objective(theta):
        return scale * plain_loss(loss, functional_call(model, plain_parameters(model, theta), (X,)), y)

    return torch.autograd.functional.hessian(objective, plain_theta(model))


def autograd_ggn(model, X, loss, scale=1.0):
    """scale * sum_j J_j^T A_j J_j, A_j = diag(p) - p p^T (cross-entropy) or 2 I (squared error)."""
    model, theta = model.eval(), plain_theta(model)
    total = torch.zeros(theta.numel(), theta.numel(), dtype=torch.float64)
    for x in X:
        J = torch.autograd.functional.jacobian(
            lambda t, x=x: functional_call(model, plain_parameters(model, t), (x[None],))[0], theta
        )
        if loss == "cross_entropy":
            p = torch.softmax(model(x[None])[0], dim=0).detach()
            A = torch.diag(p) - torch.outer(p, p)
        else:
            A = 2 * torch.eye(J.shape[0], dtype=torch.float64)
        total += J.T @ A @ J
    return scale * total


def assert_relative(actual, expected, rtol=1e-12):
    error = float((actual - expected).abs().max())
    assert error <= rtol * float(expected.abs().max()), (
        f"max error {error:.2e} vs max {expected.abs().max():.2e}"
    )


@pytest.mark.parametrize("name", CASES)
def test_block_row_hessian_equals_autograd(name):
    model, X, y, loss = make_case(name)
    flat = FlatModel(model, torch.float64)
    H = dense_hessian(flat, lambda out, t: plain_loss(loss, out, t) / 7, X, y, row_chunk=4, input_layer=False)
    expected = autograd_hessian(model, X, y, loss, scale=1 / 7)
    assert_relative(H, expected)
    assert torch.equal(H, H.T)


class Images(nn.Module):
    """Flatten, then an MLP: the input layer sees the flattened image."""

    def __init__(self, bias=True):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(9, 4, bias=bias), nn.Softplus(), nn.Linear(4, 3))

    def forward(self, x):
        return self.layers(x)


def frozen_bias_mlp():
    model = mlp(nn.Tanh(), 3)
    model[0].bias.requires_grad_(False)
    return model


INPUT_LAYER_CASES = {
    "tanh-mlp-ce": (lambda: mlp(nn.Tanh(), 3), (20, 4), "cross_entropy"),
    "softplus-mlp-mse": (lambda: mlp(nn.Softplus(), 2), (20, 4), "mse"),
    "flatten-images-ce": (Images, (15, 1, 3, 3), "cross_entropy"),
    "no-bias-images-mse": (lambda: Images(bias=False), (15, 1, 3, 3), "mse"),
    "frozen-bias-ce": (frozen_bias_mlp, (20, 4), "cross_entropy"),
    "logistic-regression": (lambda: nn.Linear(4, 3), (20, 4), "cross_entropy"),
    # an in-place activation on the layer's output (not idempotent: applied twice it changes the values)
    "inplace-leaky-relu-ce": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.LeakyReLU(0.1, inplace=True), nn.Linear(5, 3)),
        (20, 4),
        "cross_entropy",
    ),
}


def fail_block_rows(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("block rows used")

    monkeypatch.setattr(hessview.engine.dense._BlockRows, "rows", refuse)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", INPUT_LAYER_CASES)
def test_input_layer_hessian_equals_autograd_without_block_rows(name, device, monkeypatch):
    model, X, y, loss = make_case(name, cases=INPUT_LAYER_CASES)
    expected = autograd_hessian(model, X, y, loss, scale=1 / 7)
    model, X, y = model.to(device), X.to(device), y.to(device)
    flat = FlatModel(model, torch.float64)
    fail_block_rows(monkeypatch)
    H = dense_hessian(flat, lambda out, t: plain_loss(loss, out, t) / 7, X, y)
    assert H.device.type == device
    H = H.cpu()
    assert_relative(H, expected)
    assert torch.equal(H, H.T)
    # passes of 2 samples and 3 tangents give the same matrix
    small = dense_hessian(
        flat, lambda out, t: plain_loss(loss, out, t) / 7, X, y, row_chunk=3, pass_bytes=3 * 2 * 9 * 8
    )
    assert_relative(small.cpu(), H, rtol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", INPUT_LAYER_CASES)
def test_input_layer_ggn_equals_autograd_and_passes_its_check(name, device):
    model, X, y, loss = make_case(name, cases=INPUT_LAYER_CASES)
    expected = autograd_ggn(model, X, loss, scale=0.25).to(device)
    model, X = model.to(device), X.to(device)
    flat = FlatModel(model, torch.float64)
    layer = hessview.engine.dense._InputLinear.probe(flat, None, X, parameter_groups(flat))
    G = layer.ggn(X, get_loss(loss), 0.25, jacobian_bytes=3 * 5 * 8 * 9, pass_bytes=1e7)  # 3-sample batches
    assert_relative(G, expected)
    assert torch.equal(G, G.T)
    assert hessview.engine.dense.ggn_agrees(flat, get_loss(loss), X, 0.25, G, samples=4)
    assert_relative(dense_ggn(flat, loss, X, 0.25), expected)


class BatchCentred(nn.Module):
    """Pre-activations centred over the batch: samples interact, so the input layer's form does not hold."""

    def __init__(self):
        super().__init__()
        self.first, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        a = self.first(x)
        return self.head(torch.tanh(a - a.mean(dim=0)))


class Scales(nn.Module):
    """Holds a parameter that the parent applies to the input before the input layer (never called)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 4))


class ScaledFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.head, self.pre = nn.Linear(4, 5), nn.Linear(5, 3), Scales()

    def forward(self, x):
        return self.head(torch.tanh(self.first(x * self.pre.scale)))


@pytest.mark.parametrize("factory", [BatchCentred, ScaledFirst])
def test_input_layer_form_is_checked_and_block_rows_take_over_when_it_does_not_hold(factory):
    torch.manual_seed(0)
    model = factory().double()
    X, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    flat = FlatModel(model, torch.float64)

    def loss_sum(out, t):
        return plain_loss("cross_entropy", out, t)

    expected = autograd_hessian(model, X, y, "cross_entropy")
    groups = parameter_groups(flat)
    layer = hessview.engine.dense._InputLinear.probe(flat, loss_sum, X, groups)
    assert layer is not None  # the layer qualifies by its structure ...
    wrong = layer.hessian(X, y, row_chunk=128, pass_bytes=1e7)
    assert float((wrong - expected).abs().max()) > 1e-3 * float(expected.abs().max())  # ... but is wrong
    assert not hessview.engine.dense.hessian_agrees(flat, loss_sum, X, y, wrong, samples=5)
    assert_relative(dense_hessian(flat, loss_sum, X, y), expected)


def test_input_layer_ggn_with_a_parameter_before_the_layer_is_refused_by_its_check():
    torch.manual_seed(0)
    model = ScaledFirst().double()
    X = torch.randn(12, 4, dtype=torch.float64)
    flat = FlatModel(model, torch.float64)
    expected = autograd_ggn(model, X, "cross_entropy")
    wrong = hessview.engine.dense._InputLinear.probe(flat, None, X, parameter_groups(flat)).ggn(
        X, get_loss("cross_entropy"), 1.0, jacobian_bytes=5e7, pass_bytes=1e7
    )
    assert float((wrong - expected).abs().max()) > 1e-3 * float(expected.abs().max())
    assert not hessview.engine.dense.ggn_agrees(flat, "cross_entropy", X, 1.0, wrong, samples=12)
    assert_relative(dense_ggn(flat, "cross_entropy", X, 1.0), expected)


class WeaklyCoupled(nn.Module):
    """Pre-activations shifted by ``coupling`` times their batch mean: samples interact, weakly."""

    def __init__(self, coupling):
        super().__init__()
        self.first, self.head, self.coupling = nn.Linear(4, 5), nn.Linear(5, 3), coupling

    def forward(self, x):
        a = self.first(x)
        return self.head(torch.tanh(a - self.coupling * a.mean(dim=0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_weak_interaction_of_samples_is_caught_in_float32_and_float64(dtype):
    """A batch-mean coupling of 1e-3 makes the input layer's form about 7e-4 wrong: block rows take over."""
    torch.manual_seed(0)
    model = WeaklyCoupled(1e-3).to(dtype)
    X, y = torch.randn(300, 4, dtype=dtype), torch.randint(0, 3, (300,))
    flat = FlatModel(model, dtype)

    def loss_sum(out, t):
        return plain_loss("cross_entropy", out, t) / 300

    expected = autograd_hessian(model.double(), X.double(), y, "cross_entropy", scale=1 / 300)
    model.to(dtype)
    layer = hessview.engine.dense._InputLinear.probe(flat, loss_sum, X, parameter_groups(flat))
    wrong = layer.hessian(X, y, row_chunk=128, pass_bytes=1e7).double()
    assert float((wrong - expected).norm() / expected.norm()) > 3e-4
    H = dense_hessian(flat, loss_sum, X, y).double()
    assert float((H - expected).norm() / expected.norm()) < (1e-5 if dtype == torch.float32 else 1e-13)


def test_input_layer_is_not_used_for_a_layer_called_twice_or_after_a_parameterised_module(monkeypatch):
    flat = FlatModel(HeadFirst(), torch.float64)  # head registered first, but called last
    X = torch.randn(6, 3, dtype=torch.float64)
    groups = parameter_groups(flat)
    assert hessview.engine.dense._InputLinear.probe(flat, lambda o, t: o.sum(), X, groups) is None

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(3, 3)

        def forward(self, x):
            return self.first(torch.tanh(self.first(x)))

    flat = FlatModel(Twice(), torch.float64)
    assert hessview.engine.dense._InputLinear.probe(flat, lambda o, t: o.sum(), X, groups[:1]) is None


class KeywordInput(nn.Module):
    """The input layer called with its input as a keyword argument."""

    def __init__(self):
        super().__init__()
        self.first, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.first(input=x)))


def test_an_input_layer_called_with_a_keyword_argument_gets_the_autograd_hessian():
    torch.manual_seed(0)
    model = KeywordInput().double()
    X, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    flat = FlatModel(model, torch.float64)
    H = dense_hessian(flat, lambda out, t: plain_loss("cross_entropy", out, t), X, y)
    assert_relative(H, autograd_hessian(model, X, y, "cross_entropy"))


@pytest.mark.parametrize("name", ["tanh-mlp-ce", "pool-cnn-mse", "head-first-ce"])
def test_dense_ggn_equals_autograd(name):
    model, X, y, loss = make_case(name)
    G = dense_ggn(FlatModel(model, torch.float64), loss, X, 0.25)
    assert_relative(G, autograd_ggn(model, X, loss, scale=0.25))


def test_passes_of_few_samples_and_small_jacobian_batches_give_the_same(monkeypatch):
    model, X, y, loss = make_case("pool-cnn-ce")
    flat = FlatModel(model, torch.float64)
    whole = dense_hessian(flat, lambda out, t: plain_loss(loss, out, t), X, y)
    # 2 samples per pass with 3 vectors, 4 Jacobians per batch
    split = dense_hessian(
        flat, lambda out, t: plain_loss(loss, out, t), X, y, row_chunk=3, pass_bytes=3 * 2 * 20 * 8
    )
    assert_relative(split, whole, rtol=1e-14)
    ggn = dense_ggn(flat, loss, X, 1.0)
    monkeypatch.setattr(hessview.engine.dense, "JACOBIAN_BYTES", 4 * 2 * flat.n_params * 8)
    assert_relative(dense_ggn(flat, loss, X, 1.0), ggn, rtol=1e-14)


def test_parameter_groups_follow_modules():
    flat = FlatModel(HeadFirst(), torch.float64)
    assert flat.names == ["head.weight", "head.bias", "shared.weight", "first.weight"]
    assert parameter_groups(flat) == [(0, 2), (2, 3), (3, 4)]


@pytest.mark.parametrize("screen", [True, False])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_toolbox_fit_equals_autograd_screened_and_not(curvature, screen):
    # a ReLU network driven to saturation on part of the data: screening leaves those samples out
    model, X, y, loss = make_case("relu-mlp-ce")
    X = torch.cat([X, 200 * X[:8]])
    y = torch.cat([y, model(200 * X[:8]).argmax(dim=1)])
    tb = HessianToolbox(model, X, y, weight_decay=0.01, curvature=curvature, screen=screen, progress=False)
    # not at a minimum (the labels of the added points are the model's own): the curvature is compared
    with expect_warnings(NOT_STATIONARY, *([DAMPED] if curvature == "hessian" else [])):
        tb.fit()
    assert (tb.n_screened_ > 0) == screen
    eye = torch.eye(tb.n_params, dtype=torch.float64)
    if curvature == "hessian":
        expected = autograd_hessian(model, X, y, loss, scale=1 / len(X)) + 0.01 * eye
    else:
        expected = autograd_ggn(model, X, loss, scale=1 / len(X)) + 0.01 * eye
    assert_relative(tb.hessian, expected)


def test_fit_when_every_sample_is_screened_equals_autograd():
    """No sample left to form the curvature from (this used to fail in make_shards); exact all the same."""
    model, X, y, loss = make_case("relu-mlp-ce")
    X = 1000 * X
    p = torch.softmax(model(X), dim=1).detach()
    X = X[(1 - p.max(dim=1).values) < 2.0**-53]  # the samples the model is sure of, in float64
    assert len(X) >= 2
    y = model(X).argmax(dim=1)
    with expect_warnings(NOT_STATIONARY):  # the weight decay's gradient alone is far from zero
        tb = HessianToolbox(model, X, y, weight_decay=0.01, progress=False).fit()
    expected = autograd_hessian(model, X, y, loss, scale=1 / len(X))
    assert_relative(tb.hessian, expected + 0.01 * torch.eye(tb.n_params, dtype=torch.float64))


def test_shards_of_the_papers_cnn_sum_to_the_autograd_hessian():
    """The paper's CNN (published weights, im2col first layer, max- and average-pooling) on four inputs."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(4, 1, 924, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    for model in (load_published_weights(torch.float64), CNN1D_tiny_ED().double().eval()):
        flat = FlatModel(model, torch.float64)
        shards = make_shards(flat, X, y, "cross_entropy", 2)
        H = sum(shard.dense_curvature("hessian", 128) for shard in shards)
        assert_relative(H, autograd_hessian(model, X, y, "cross_entropy", scale=1 / 4))


def test_hessian_from_dask_workers_equals_autograd():
    """Shards pickled to two in-process Dask workers (their threads take turns) give the exact Hessian."""
    distributed = pytest.importorskip("distributed")
    from distributed.protocol import deserialize, serialize

    model, X, y, loss = make_case("pool-cnn-ce")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None, silence_logs=40
    )
    with cluster, distributed.Client(cluster) as client, expect_warnings(NOT_STATIONARY, DAMPED):
        tb = HessianToolbox(model, X, y, weight_decay=0.01, client=client, progress=False).fit()
    expected = autograd_hessian(model, X, y, loss, scale=1 / len(X))
    assert_relative(tb.hessian, expected + 0.01 * torch.eye(tb.n_params, dtype=torch.float64))
    shard = make_shards(FlatModel(model, torch.float64), X, y, loss, 8, len(X))[0]
    copy = deserialize(*serialize(shard, serializers=["pickle"]))
    assert torch.equal(copy.dense_curvature("hessian", 16), shard.dense_curvature("hessian", 16))


MEMORY_SCRIPT = """
import resource, sys, torch
from torch import nn
from hessview.engine.dense import dense_hessian
from hessview.engine.params import FlatModel
d, h, n = map(int, sys.argv[1:])
loss_sum = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="sum")
torch.manual_seed(0)
small = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 3)).double()
dense_hessian(FlatModel(small, torch.float64), loss_sum, torch.randn(4, 3).double(), torch.arange(4) % 3)
model = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, 3)).double()
X, y = torch.randn(n, d, dtype=torch.float64), torch.randint(0, 3, (n,))
flat = FlatModel(model, torch.float64)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
H = dense_hessian(flat, loss_sum, X, y)
print(H.numel() * 8, 1024 * (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before))
"""


@pytest.mark.parametrize("sizes", [(784, 2, 150), (100, 30, 200)])
def test_input_layer_hessian_memory_stays_near_the_size_of_the_hessian(sizes, tmp_path):
    """Peak resident memory of a fresh process against the Hessian's size (after a warm-up on a tiny MLP).

    784 inputs: 308,505 pairs x_j x_l per sample, 0.37 GB for 150 samples at once, the Hessian 20 MB;
    100 inputs, 30 outputs: the pairs' second derivatives are half the Hessian's size (78 MB), assembled
    into it a slice at a time (before: 1.07 GB and 310 MB). Block rows peak at about 4 Hessians here.
    """
    import subprocess
    import sys

    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), *map(str, sizes)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    hessian_bytes, extra = map(int, result.stdout.split())
    message = f"peak grew by {extra / 1e6:.0f} MB, the Hessian is {hessian_bytes / 1e6:.0f} MB"
    assert extra < 2 * hessian_bytes + 100e6, message  # 100 MB: temporaries of pass_bytes (10 MB) and noise
