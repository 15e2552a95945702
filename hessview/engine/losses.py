"""Loss objects: the per-sample loss, its output Hessian (for the GGN), target checks and measurements.

``cross_entropy``: :math:`L(x, y) = -\\log \\mathrm{softmax}(f(x))_y` for integer labels ``y``.
``mse``: :math:`L(x, y) = \\lVert f(x) - y \\rVert^2` summed over output dimensions (so the mean over
samples is the usual mean squared error for a single output).

A *measurement* is the per-sample function of the outputs whose change influence predicts
(Kronfluence's term; Park et al. 2023, TRAK). ``"loss"`` is the loss itself (the paper's choice);
``"margin"`` is, for classifiers, the logit margin of the label

.. math:: m(x, y) = \\log p_y - \\log(1 - p_y) = f_y - \\log \\sum_{k \\ne y} e^{f_k},

which, unlike the loss, does not vanish when the softmax saturates. A new loss subclasses :class:`Loss`
and is passed to ``HessianToolbox(loss=...)`` as an instance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MEASUREMENTS = ("loss", "margin")


class Loss:
    """A per-sample loss. Subclasses define ``name``, :meth:`per_sample` and :meth:`output_hessian_product`.

    ``classification`` says whether targets are integer labels (then labels can be predicted, and
    the model's outputs are logits of shape ``(n, C)`` with ``C >= 2``).
    """

    name: str = "loss"
    classification: bool = False
    measurements: tuple[str, ...] = ("loss",)

    def per_sample(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Vector of per-sample losses for a batch of ``outputs`` and targets ``y``."""
        raise NotImplementedError

    def output_hessian_product(self, outputs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """:math:`\\partial^2 L / \\partial f^2 \\, u` per sample (``outputs``, ``u``: ``(n, ...)``)."""
        raise NotImplementedError

    def measure(self, outputs: torch.Tensor, y: torch.Tensor, measurement: str = "loss") -> torch.Tensor:
        """Per-sample values of ``measurement`` (one of :attr:`measurements`)."""
        check_measurement(self, measurement)
        return self.per_sample(outputs, y)

    def predict_targets(self, outputs: torch.Tensor) -> torch.Tensor:
        """Targets predicted from outputs (labels for classifiers); regression cannot predict targets."""
        raise ValueError(f"y_test is required for loss={self.name!r} (no label can be predicted)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits ``(n, C)`` with integer labels.

    >>> out = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    >>> CrossEntropy().per_sample(out, torch.tensor([1]))  # log 2
    tensor([0.6931], dtype=torch.float64)
    >>> CrossEntropy().measure(torch.tensor([[0.0, 3.0]], dtype=torch.float64), torch.tensor([1]), "margin")
    tensor([3.], dtype=torch.float64)
    """

    name = "cross_entropy"
    classification = True
    measurements = ("loss", "margin")

    def per_sample(self, outputs, y):  # noqa: D102 (documented in Loss)
        return F.cross_entropy(outputs, y, reduction="none")

    def output_hessian_product(self, outputs, u):  # noqa: D102 (documented in Loss)
        p = torch.softmax(outputs, dim=-1)
        return p * u - p * (p * u).sum(dim=-1, keepdim=True)

    def measure(self, outputs, y, measurement="loss"):  # noqa: D102 (documented in Loss)
        check_measurement(self, measurement)
        if measurement == "loss":
            return self.per_sample(outputs, y)
        label = outputs.gather(1, y[:, None])[:, 0]
        others = outputs.scatter(1, y[:, None], float("-inf"))
        return label - torch.logsumexp(others, dim=1)

    def predict_targets(self, outputs):  # noqa: D102 (documented in Loss)
        return outputs.argmax(dim=1)


class SquaredError(Loss):
    """Squared error summed over output dimensions.

    >>> SquaredError().per_sample(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
    tensor([5.])
    """

    name = "mse"

    def per_sample(self, outputs, y):  # noqa: D102 (documented in Loss)
        diff = (outputs - y.reshape(outputs.shape)).reshape(outputs.shape[0], -1)
        return (diff**2).sum(dim=1)

    def output_hessian_product(self, outputs, u):  # noqa: D102 (documented in Loss)
        return 2.0 * u


_BUILTIN = {"cross_entropy": CrossEntropy, "mse": SquaredError}
LOSSES = tuple(_BUILTIN)


def get_loss(loss: str | Loss) -> Loss:
    """The loss object for a name in :data:`LOSSES` or a :class:`Loss` instance (returned as is)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in _BUILTIN:
        return _BUILTIN[loss]()
    raise ValueError(f"loss must be one of {LOSSES} or a hessview.engine.losses.Loss instance, not {loss!r}")


def check_measurement(loss: Loss, measurement) -> str:
    """Refuse a measurement the loss does not define, naming the ones it does."""
    if measurement not in loss.measurements:
        raise ValueError(
            f"measurement must be one of {loss.measurements} for loss={loss.name!r}, not {measurement!r}"
        )
    return measurement


def per_sample_loss(name: str | Loss, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Vector of per-sample losses for a batch of model ``outputs`` and targets ``y``.

    >>> out = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    >>> per_sample_loss("cross_entropy", out, torch.tensor([1]))  # log 2
    tensor([0.6931], dtype=torch.float64)
    >>> per_sample_loss("mse", torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
    tensor([5.])
    """
    return get_loss(name).per_sample(outputs, y)
