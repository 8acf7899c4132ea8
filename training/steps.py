"""The train and evaluate steps declared: settings, columns, outputs.

Kept apart from training/train.py and training/evaluate.py, which import Keras, so that the
registry, `curate --help` and `curate run --help` stay fast; `run` imports the work when called.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from curation.config import BACKBONES, DatasetConfig, TrainingSettings
from curation.settings import setting
from curation.steps import Step, Workdir, run_step
from curation.vocabulary import MODEL_DIR

_TRAINING = {  # TrainingSettings field -> (help, constraints)
    "epochs": ("Head-phase epochs (backbone frozen).", {"low": 1}),
    "fine_tune_epochs": ("Fine-tuning epochs (0: head only).", {"low": 0}),
    "batch_size": ("Images per step.", {"low": 1}),
    "learning_rate": ("Head-phase Adam rate.", {"low": 0, "low_open": True}),
    "fine_tune_learning_rate": ("Fine-tuning Adam rate.", {"low": 0, "low_open": True}),
    "fine_tune_layers": ("Backbone layers unfrozen from the top (BatchNorm stays frozen).",
                         {"low": 0}),
    "dropout": ("Dropout before the classifier.", {"low": 0, "high": 1, "high_open": True}),
    "label_smoothing": ("Label smoothing.", {"low": 0, "high": 1, "high_open": True}),
    "patience": ("Epochs without a better val score before stopping.", {"low": 1}),
    "augment": ("Flip/crop/rotate/colour augmentation while fine-tuning.", {}),
}


def _training_field(f: dataclasses.Field):
    text, bounds = _TRAINING[f.name]
    return f.name, f.type, setting(None, f"{text} [default: datasets.yaml]",
                                   config=f"training.{f.name}", kind=type(f.default), **bounds)


_Recipe = dataclasses.make_dataclass(
    "_Recipe", [_training_field(f) for f in dataclasses.fields(TrainingSettings)], frozen=True)


@dataclass(frozen=True)
class TrainSettings(_Recipe):
    """What `curate train` can be told: the training recipe (datasets.yaml's `training:` by
    default) and the model's backbone, weights and input size."""

    backbone: str | None = setting(None, "ImageNet backbone [default: datasets.yaml].",
                                   choices=BACKBONES, config="backbone")
    weights: str | None = setting(None, "imagenet ($CURATE_WEIGHTS file, else download), a no-top "
                                  "weights file, or none [default: datasets.yaml].",
                                  config="weights", kind=str)
    image_size: int | None = setting(None, "Square input size in pixels [default: datasets.yaml].",
                                     kind=int, low=32, high=1024, config="image_size")
    seed: int = setting(0, "Seeds shuffling, augmentation, init.")
    workers: int | None = setting(None, "Decode processes (default: cores).", kind=int, low=1,
                                  high=256, result=False)
    distribute: bool | None = setting(None, "Split each batch across every visible GPU (or "
                                      "logical CPU): MirroredStrategy under TensorFlow, "
                                      "DataParallel under JAX [default: on when two or more "
                                      "GPUs/TPUs are visible].", kind=bool, result=False)

    def recipe(self) -> TrainingSettings:
        return TrainingSettings(**{f.name: getattr(self, f.name)
                                   for f in dataclasses.fields(TrainingSettings)})


@dataclass(frozen=True)
class EvaluateSettings:
    """What `curate evaluate` can be told."""

    model_dir: Path | None = setting(None, "Trained model folder (default: <workdir>/model).",
                                     path="dir", result=False)   # its outputs go beside it
    ood_folder: Path | None = setting(None, "Folder of images of no trained class (e.g. "
                                      "non-cars): report how often the guard flags them.",
                                      path="dir", exists=True)
    batch_size: int | None = setting(None, "Images per batch [default: training batch size].",
                                     kind=int, low=1, config="training.batch_size", result=False)
    workers: int | None = setting(None, "Decode processes (default: cores).", kind=int, low=1,
                                  high=256, result=False)


TRAIN_HELP = """Train a make/model classifier on the train split, picking the best epoch on val.

\b
Example: curate train stanford-cars-25 --epochs 10 --fine-tune-epochs 12
         KERAS_BACKEND=jax curate train swift-wagonr --image-size 192
A frozen-backbone head phase, then fine-tuning of the top layers with augmentation.
Writes <workdir>/model/: model.keras, labels.json, ood.json, history.csv, curves.png, logs/.
The test split is never read.
"""


EVALUATE_HELP = """Score the trained model on the test split: accuracy, macro-F1, per class, plots.

\b
Example: curate evaluate stanford-cars-25 --ood-folder $CURATE_DATA/non-car
Writes metrics.json, confusion.png, misclassified.png and predictions.csv to the workdir
(with --model-dir: beside that model, so scoring another model never overwrites this one's).
"""


def _train(work: Workdir, settings: TrainSettings) -> dict:
    from training import train as work_

    return work_.run(work, settings)


def _evaluate(work: Workdir, settings: EvaluateSettings) -> dict:
    from training import evaluate as work_

    return work_.run(work, settings)


def _describe_train(summary: dict) -> str:
    from training import train as work_

    return work_.describe(summary)


def _describe_evaluate(summary: dict) -> str:
    from training import evaluate as work_

    return work_.describe(summary)


TRAIN = Step("train", TrainSettings, _train, _describe_train, help=TRAIN_HELP,
             needs=("path", "label", "split"), uses=("bytes", "mtime"),
             outputs=(f"{MODEL_DIR}/model.keras",))
EVALUATE = Step("evaluate", EvaluateSettings, _evaluate, _describe_evaluate, help=EVALUATE_HELP,
                needs=("path", "label", "split"), uses=("bytes", "mtime"), after=("train",),
                outputs=("metrics.json",))


def train(config: DatasetConfig, workdir: Path, *, quiet: bool = False, **settings) -> dict:
    """`curate train` as a function: see TrainSettings for the keyword arguments."""
    return run_step(TRAIN, config, workdir, quiet=quiet, **settings)


def evaluate(config: DatasetConfig, workdir: Path, *, quiet: bool = False, **settings) -> dict:
    """`curate evaluate` as a function: see EvaluateSettings for the keyword arguments."""
    return run_step(EVALUATE, config, workdir, quiet=quiet, **settings)
