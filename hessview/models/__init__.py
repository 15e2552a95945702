"""Reference models: the paper's CNN, a small Ising CNN, min-max scaling and training to a minimum."""

from hessview.models.architectures import CNN1D_tiny_ED, IsingCNN, LogSumExpPool1d
from hessview.models.published import PUBLISHED_WEIGHTS, load_published_weights
from hessview.models.scaling import MinMaxScaler
from hessview.models.training import TrainResult, sample_gradient_norms, train

__all__ = [
    "CNN1D_tiny_ED",
    "IsingCNN",
    "LogSumExpPool1d",
    "MinMaxScaler",
    "PUBLISHED_WEIGHTS",
    "TrainResult",
    "load_published_weights",
    "sample_gradient_norms",
    "train",
]
