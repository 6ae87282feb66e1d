"""The shared trainer: `train(model, data, loss_fn, params, device, log_path)`."""

from tasks.training.data import Augment, BatchSource, PairTensors, encode_batch_text
from tasks.training.trainer import TrainResult, clip_loss_fn, train

__all__ = [
    "Augment",
    "BatchSource",
    "PairTensors",
    "TrainResult",
    "clip_loss_fn",
    "encode_batch_text",
    "train",
]
