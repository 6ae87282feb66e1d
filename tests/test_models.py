"""The model API: zoo, factory, on-disk format, encoders and image tensors (real models)."""

from __future__ import annotations

import io
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from tasks.images import ImageDecodeError, decode_images, normalize, random_resized_crop_flip
from tasks.models import (
    ModelLoadError,
    create_model,
    encode_images,
    encode_texts,
    get_model_config,
    load_model,
    save_model,
    sha256_file,
    trainable_parameters,
    vision_parameters,
)
from tasks.models.zoo import UnknownModelError, minilm_path, register_repo_configs

torch.set_num_threads(2)


def _png(seed: int, size: tuple[int, int] = (20, 28)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model("clipops-vit-s-minilm", lock_text=True)


def test_repo_config_resolves_minilm_placeholder():
    cfg = get_model_config("clipops-vit-s-minilm")
    assert cfg["text_cfg"]["hf_model_name"] == minilm_path()
    assert cfg["text_cfg"]["hf_tokenizer_name"] == minilm_path()


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(UnknownModelError, match="clipops-vit-s-minilm"):
        get_model_config("no-such-model")


def test_repo_configs_registered_with_open_clip():
    register_repo_configs()
    assert "clipops-vit-xs-minilm" in open_clip.list_models()
    cfg = open_clip.get_model_config("clipops-vit-s-minilm")
    assert cfg["text_cfg"]["hf_model_name"] == minilm_path()


def test_teacher_has_expected_size_and_locked_text(teacher):
    model = teacher.model
    assert type(model).__name__ == "CustomTextCLIP"
    assert vision_parameters(model) == 853_248
    named = model.named_parameters()
    trainable_text = [n for n, p in named if p.requires_grad and n.startswith("text")]
    assert trainable_text == ["text.proj.weight"]
    assert trainable_parameters(model) == 853_248 + 384 * 256 + 1  # + logit_scale
    assert teacher.image_size == 32


def test_builtin_open_clip_name_builds():
    loaded = create_model("RN50", device="cpu")  # a built-in config, random init, no download
    assert loaded.image_size == 224
    assert loaded.tokenizer(["a cat"]).shape == (1, 77)


def test_save_load_round_trip_and_plain_open_clip(tmp_path, teacher):
    out = tmp_path / "teacher"
    meta = {"stage": "teacher", "metrics": {"x": 1}}
    card = save_model(teacher.model, teacher.name, teacher.model_cfg, out, meta)
    assert card["weights_sha256"] == sha256_file(out / "model.safetensors")
    saved_cfg = json.loads((out / "open_clip_config.json").read_text())
    assert set(saved_cfg) == {"model_name", "model_cfg", "preprocess_cfg"}
    assert saved_cfg["model_cfg"]["text_cfg"]["hf_model_name"] == minilm_path()

    images = [_png(i) for i in range(5)]
    texts = ["a photo of the digit 3.", "a red circle", "x", "", "a scan of the digit 7."]
    teacher.model.eval()
    want_i, want_t = encode_images(teacher, images), encode_texts(teacher, texts)

    loaded = load_model(out, "cpu")
    assert loaded.card["stage"] == "teacher" and loaded.card["metrics"] == {"x": 1}
    assert not loaded.model.training
    np.testing.assert_allclose(encode_images(loaded, images), want_i, atol=1e-6)
    np.testing.assert_allclose(encode_texts(loaded, texts), want_t, atol=1e-6)

    # Plain open_clip, knowing nothing of clipops: register the config by name, load weights.
    name = "roundtrip-" + tmp_path.name.replace("_", "-")
    cfg_file = tmp_path / f"{name}.json"
    cfg_file.write_text(json.dumps(saved_cfg["model_cfg"]))
    open_clip.add_model_config(cfg_file)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=str(out / "model.safetensors")
    )
    model.eval()
    x = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images])
    with torch.no_grad():
        feats = torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()
    np.testing.assert_allclose(feats, want_i, atol=1e-4)

    # and open_clip's own local-dir schema reads the folder as is, weights included
    model2 = open_clip.create_model(f"local-dir:{out}")
    for key, value in loaded_state(out).items():
        assert torch.equal(model2.state_dict()[key], value), key

    # the folder also holds the bare config under the model's name, for add_model_config
    open_clip.add_model_config(out / f"{saved_cfg['model_name']}.json")
    tokenizer = open_clip.get_tokenizer(saved_cfg["model_name"])
    assert tokenizer(["a photo of the digit seven."]).shape[0] == 1


def loaded_state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_config_mismatch_fails_loudly(tmp_path, teacher):
    out = tmp_path / "teacher"
    save_model(teacher.model, teacher.name, teacher.model_cfg, out, {"stage": "teacher"})
    with pytest.raises(ModelLoadError, match="clipops-vit-s-minilm.*clipops-vit-xs-minilm"):
        load_model(out, "cpu", model_name="clipops-vit-xs-minilm")
    with pytest.raises(ModelLoadError, match="clipops-vit-s-minilm.*clipops-vit-s-text-s"):
        create_model("clipops-vit-s-text-s", pretrained=out)


def test_missing_pretrained_path_is_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        create_model("clipops-vit-s-text-s", pretrained=tmp_path / "nope.safetensors")
    with pytest.raises(ModelLoadError, match="not a clipops model folder"):
        load_model(tmp_path, "cpu")


def test_encoders_shapes_and_norms(teacher):
    imgs = encode_images(teacher, [_png(i, (40, 24)) for i in range(7)], batch_size=3)
    txts = encode_texts(teacher, ["one", "two words", "three words here"], batch_size=2)
    assert imgs.shape == (7, 256) and imgs.dtype == np.float32
    assert txts.shape == (3, 256) and txts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(imgs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txts, axis=1), 1.0, atol=1e-5)
    assert encode_texts(teacher, []).shape == (0, 256)
    # different inputs give different embeddings (the encoder is not constant)
    assert np.abs(imgs[0] - imgs[1]).max() > 1e-3


def test_decode_matches_open_clip_preprocess(teacher):
    images = [_png(i, (50, 30)) for i in range(3)]
    ours = normalize(decode_images(images, teacher.image_size))
    theirs = torch.stack([teacher.preprocess(Image.open(io.BytesIO(b))) for b in images])
    # ours rounds to uint8 after resizing; open_clip keeps the float: within one grey level
    assert ours.shape == theirs.shape == (3, 3, 32, 32)
    assert (ours - theirs).abs().max() < 1.0 / 255 / 0.26 + 1e-4


def test_decode_error_names_the_row():
    with pytest.raises(ImageDecodeError, match=r"row 1 \(id b\)"):
        decode_images([_png(0), b"not an image"], 32, ids=["a", "b"])


def test_augment_is_seeded_and_identity_at_full_scale():
    x = normalize(decode_images([_png(i) for i in range(4)], 32))
    a = random_resized_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_resized_crop_flip(x, torch.Generator().manual_seed(1))
    c = random_resized_crop_flip(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    full = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}
    same = random_resized_crop_flip(x, torch.Generator(), flip_p=0, **full)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = random_resized_crop_flip(x, torch.Generator(), flip_p=1, **full)
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-5, rtol=0)
