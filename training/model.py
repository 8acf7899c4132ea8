"""The classifier: augmentation -> backbone preprocessing -> ImageNet backbone -> dropout -> softmax.

Every stage is a Keras 3 layer, so model.keras runs under TensorFlow, JAX or PyTorch and the
augmentation runs on the accelerator inside the training step.
"""
from __future__ import annotations

from pathlib import Path

import keras

from curation.embed import backbones
from curation.manifest import atomic_write

FEATURES_LAYER = "head_dropout"   # its input is the pooled backbone embedding
CLASSIFIER_LAYER = "classifier"
AUGMENT_LAYER = "augment"


@keras.saving.register_keras_serializable(package="curate")
class BackbonePreprocess(keras.layers.Layer):
    """Maps [0, 255] RGB to the input range the named backbone was trained with."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, images):
        return backbones.preprocess(self.backbone, keras.ops.clip(images, 0.0, 255.0))

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone}


def augmentation(seed: int = 0) -> keras.Sequential:
    """Flip, small shift/zoom (a random crop), small rotation and colour jitter; active only in training."""
    layers = keras.layers
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomTranslation(0.06, 0.06, fill_mode="reflect", seed=seed + 1),
        layers.RandomZoom((-0.15, 0.05), fill_mode="reflect", seed=seed + 2),
        layers.RandomRotation(0.02, fill_mode="reflect", seed=seed + 3),
        layers.RandomColorJitter(value_range=(0, 255), brightness_factor=0.1,
                                 contrast_factor=0.15, saturation_factor=(0.35, 0.65), seed=seed + 4),
    ], name=AUGMENT_LAYER)


def build_classifier(n_classes: int, *, backbone: str = "mobilenet_v2", weights: str = "imagenet",
                     image_size: int = 224, dropout: float = 0.2, augment: bool = True,
                     seed: int = 0) -> keras.Model:
    """uint8-range RGB (n, size, size, 3) -> class probabilities, with the backbone frozen."""
    base = backbones.build_backbone(backbone, weights, image_size)
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = augmentation(seed)(inputs) if augment else inputs
    x = BackbonePreprocess(backbone, name="preprocess")(x)
    features = base(x, training=False)      # BatchNorm stays in inference mode, even when unfrozen
    x = keras.layers.Dropout(dropout, name=FEATURES_LAYER)(features)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32",
                                 name=CLASSIFIER_LAYER)(x)
    return keras.Model(inputs, outputs, name=f"curate_{backbone}")


def backbone_of(model: keras.Model) -> keras.Model:
    """The ImageNet backbone nested inside a classifier."""
    return next(layer for layer in model.layers
                if isinstance(layer, keras.Model) and layer.name != AUGMENT_LAYER)


def feature_model(model: keras.Model) -> keras.Model:
    """images -> (pooled embedding, class probabilities), sharing the classifier's weights; for
    inference only: it starts after the augmentation (a no-op outside training, and random ops
    that ONNX cannot export)."""
    features = model.get_layer(FEATURES_LAYER).input
    names = [layer.name for layer in model.layers]
    inputs = model.get_layer(AUGMENT_LAYER).output if AUGMENT_LAYER in names else model.inputs
    return keras.Model(inputs, [features, model.outputs[0]])


def head_model(model: keras.Model) -> keras.Model:
    """embedding -> probabilities: the classifier's own head, trained alone on cached features."""
    dim = model.get_layer(FEATURES_LAYER).input.shape[-1]
    inputs = keras.Input((dim,), name="features")
    x = model.get_layer(FEATURES_LAYER)(inputs)
    return keras.Model(inputs, model.get_layer(CLASSIFIER_LAYER)(x), name="head")


def unfreeze_top(model: keras.Model, layers: int) -> int:
    """Make the top `layers` backbone layers trainable, BatchNorm excepted; returns how many."""
    base = backbone_of(model)
    base.trainable = layers > 0
    chosen = base.layers[-layers:] if layers > 0 else []
    for layer in base.layers:
        layer.trainable = False
    for layer in chosen:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return sum(layer.trainable for layer in chosen)


def accelerator() -> str:
    """'gpu', 'tpu' or 'cpu' for the active Keras backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if backend == "jax":
        import jax
        return jax.default_backend()
    if backend == "torch":
        import torch
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def use_mixed_precision(device: str) -> str:
    """float16 compute on GPUs (bfloat16 on TPUs), float32 on CPUs; returns the policy name."""
    policy = {"gpu": "mixed_float16", "tpu": "mixed_bfloat16"}.get(device, "float32")
    keras.mixed_precision.set_dtype_policy(policy)
    return policy


def save_classifier(model: keras.Model, path: Path) -> Path:
    """Save model.keras atomically (the temp file keeps the `.keras` suffix Keras insists on)."""
    return atomic_write(Path(path), model.save)


def load_classifier(path: Path) -> keras.Model:
    """A saved model.keras, ready for inference."""
    return keras.saving.load_model(Path(path), compile=False)
