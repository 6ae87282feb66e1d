"""The shared trainer: `train(model, data, objective, params, device, log_path)`."""

from tasks.training.data import Augment, BatchSource, PairTensors, encode_batch_text
from tasks.training.objective import ClipObjective, Objective, objective_loss
from tasks.training.trainer import TrainResult, train

__all__ = [
    "Augment",
    "BatchSource",
    "ClipObjective",
    "Objective",
    "PairTensors",
    "TrainResult",
    "encode_batch_text",
    "objective_loss",
    "train",
]
