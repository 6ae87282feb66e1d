"""Model API: the zoo of configs, the factory, the on-disk format and encoders.

from tasks.models import create_model, save_model, load_model, encode_images, encode_texts
"""

from tasks.models.encode import encode_image_tensor, encode_images, encode_texts
from tasks.models.factory import (
    LoadedModel,
    ModelLoadError,
    build_model,
    create_model,
    load_weights,
    trainable_parameters,
    vision_parameters,
)
from tasks.models.io import load_model, read_card, read_model_config, save_model, sha256_file
from tasks.models.zoo import get_model_config, list_models, register_repo_configs

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "build_model",
    "create_model",
    "encode_image_tensor",
    "encode_images",
    "encode_texts",
    "get_model_config",
    "list_models",
    "load_model",
    "load_weights",
    "read_card",
    "read_model_config",
    "register_repo_configs",
    "save_model",
    "sha256_file",
    "trainable_parameters",
    "vision_parameters",
]
