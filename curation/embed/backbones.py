"""ImageNet backbones shared by flag-noise (embeddings) and training (transfer learning).

`weights` is `imagenet` (a local file from $CURATE_WEIGHTS when present, else Keras's own
download), a path to a no-top weights file, or `none` (random init, a control).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from curation.config import BACKBONES, ConfigError, weights_dir


@dataclass(frozen=True)
class BackboneSpec:
    application: str                # keras.applications constructor name
    kwargs: tuple[tuple[str, object], ...]
    weights_files: tuple[str, ...]  # file names looked up in $CURATE_WEIGHTS
    preprocessing: str              # "tf" (-1..1), "torch" (ImageNet mean/std) or "caffe" (BGR)


SPECS = {
    "mobilenet_v2": BackboneSpec("MobileNetV2", (("alpha", 1.0),),
                                 ("mobilenet_v2_1.0_224_no_top.weights.h5",
                                  "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
                                 "tf"),
    "mobilenet_v1_025": BackboneSpec("MobileNet", (("alpha", 0.25),),
                                     ("mobilenet_v1_0.25_224_no_top.h5",
                                      "mobilenet_2_5_224_tf_no_top.h5"), "tf"),
    "efficientnet_b0": BackboneSpec("EfficientNetB0", (),
                                    ("efficientnet_b0_no_top.weights.h5", "efficientnetb0_notop.h5"),
                                    "raw"),
    "resnet50": BackboneSpec("ResNet50", (),
                             ("resnet50_no_top.weights.h5",
                              "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"), "caffe"),
}
assert set(SPECS) == set(BACKBONES)


def resolve_weights(backbone: str, weights: str | os.PathLike | None) -> str | None:
    """A local weights file path, 'imagenet' (Keras downloads), or None for random init."""
    spec = SPECS[backbone]
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights) == "imagenet":
        folder = weights_dir()
        if folder is not None:
            for name in spec.weights_files:
                if (folder / name).is_file():
                    return str(folder / name)
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"--weights {weights}: file not found (give 'imagenet', 'none' "
                          f"or the path to a no-top {backbone} weights file)")
    return str(path)


def describe_weights(backbone: str, weights: str | None) -> str:
    resolved = resolve_weights(backbone, weights)
    return "random init" if resolved is None else resolved


def build_backbone(backbone: str, weights: str | None, image_size: int):
    """A no-top Keras backbone with global average pooling: images -> (n, features)."""
    import keras

    spec = SPECS[backbone]
    resolved = resolve_weights(backbone, weights)
    constructor = getattr(keras.applications, spec.application)
    kwargs = dict(spec.kwargs, include_top=False, pooling="avg",
                  input_shape=(image_size, image_size, 3))
    if resolved == "imagenet":
        try:
            return constructor(weights="imagenet", **kwargs)
        except Exception as exc:  # offline: urllib/HTTP errors surface as many types
            raise ConfigError(
                f"could not fetch ImageNet weights for {backbone} ({exc.__class__.__name__}: {exc}). "
                f"Offline? Pass --weights PATH to a no-top weights file, or set CURATE_WEIGHTS to a "
                f"folder holding one of: {', '.join(spec.weights_files)}") from None
    model = constructor(weights=None, **kwargs)
    if resolved is not None:
        model.load_weights(resolved)
    return model


def preprocess(backbone: str, images):
    """Map uint8/float RGB images in [0, 255] to what the backbone expects (backend-neutral)."""
    from keras import ops

    kind = SPECS[backbone].preprocessing
    images = ops.cast(images, "float32")
    if kind == "tf":
        return images / 127.5 - 1.0
    if kind == "caffe":
        return images[..., ::-1] - ops.convert_to_tensor([103.939, 116.779, 123.68])
    return images
