"""Every step, declared once, in pipeline order: `curate run`, the report's order and the
CLI's step options all read this tuple. Adding a step = declaring its `Step` in its own module
and adding it here."""
from __future__ import annotations

from curation.dedupe.step import STEP as DEDUPE
from curation.noise.step import STEP as FLAG_NOISE
from curation.scan.step import STEP as SCAN
from curation.split.step import STEP as SPLIT
from curation.steps import Step
from training.steps import EVALUATE, TRAIN

PIPELINE: tuple[Step, ...] = (SCAN, DEDUPE, FLAG_NOISE, SPLIT, TRAIN, EVALUATE)
NAMES = tuple(step.name for step in PIPELINE)
BY_NAME = {step.name: step for step in PIPELINE}
# runs/<step>.json of steps outside `curate run`, placed where their results are read
RECORD_ORDER = (*NAMES[:NAMES.index("split")], "review", "review-sync",
                *NAMES[NAMES.index("split"):], "check-leaks")
