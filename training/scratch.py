"""A small CNN trained from scratch: the classifier when no pretrained weights are at hand.

`curate demo`, offline and without $CURATE_WEIGHTS, trains this instead of a frozen backbone with
random weights (which learns nothing: its loss stays at ln(classes)). Trained end to end with
augmentation it learns the synthetic set's drawn vehicles; it is far too small for real photos.
Its layer names match the transfer classifier's, so calibration, evaluation and prediction
treat both alike.
"""
from __future__ import annotations

SCRATCH = "scratch"          # the `weights` value that selects this network
SCRATCH_NAME = "small_cnn"   # what summaries and labels.json call it
WIDTHS = (32, 64, 96, 128)   # filters per conv block; each block but the last halves the size


def build_scratch_classifier(n_classes: int, *, image_size: int, dropout: float = 0.2,
                             augment: bool = True, seed: int = 0):
    """uint8-range RGB (n, size, size, 3) -> class probabilities (a keras.Model), every layer
    trainable. Keras is imported here so the demo can name SCRATCH without loading it."""
    import keras

    from .model import CLASSIFIER_LAYER, FEATURES_LAYER, augmentation

    layers = keras.layers
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = augmentation(seed)(inputs) if augment else inputs
    x = layers.Rescaling(1 / 255.0, name="preprocess")(x)
    for block, width in enumerate(WIDTHS):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{block}")(x)
        # momentum 0.9: a few hundred steps must be enough for the inference statistics
        x = layers.BatchNormalization(momentum=0.9, name=f"norm{block}")(x)
        x = layers.ReLU(name=f"relu{block}")(x)
        if block < len(WIDTHS) - 1:
            x = layers.MaxPooling2D(name=f"pool{block}")(x)
    features = layers.GlobalAveragePooling2D(name="pooled")(x)
    x = layers.Dropout(dropout, name=FEATURES_LAYER)(features)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32",
                           name=CLASSIFIER_LAYER)(x)
    return keras.Model(inputs, outputs, name=f"curate_{SCRATCH_NAME}")
