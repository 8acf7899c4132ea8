"""Every step, declared once: `curate run` runs PIPELINE in order, the report lists the runs in
STEPS order, and cli.py makes a command of each pipeline step. Adding a step = declaring its
`Step` in its own module and adding it here."""
from __future__ import annotations

from curation.dedupe.step import STEP as DEDUPE
from curation.embed.step import STEP as EMBED
from curation.noise.step import STEP as FLAG_NOISE
from curation.review.step import REVIEW, SYNC as REVIEW_SYNC
from curation.scan.step import STEP as SCAN
from curation.split.step import STEP as SPLIT
from curation.steps import Step
from training.steps import EVALUATE, TRAIN

PIPELINE: tuple[Step, ...] = (SCAN, DEDUPE, EMBED, FLAG_NOISE, SPLIT, TRAIN, EVALUATE)
STEPS: tuple[Step, ...] = (SCAN, DEDUPE, EMBED, FLAG_NOISE, REVIEW, REVIEW_SYNC, SPLIT, TRAIN,
                            EVALUATE)
NAMES = tuple(step.name for step in PIPELINE)
BY_NAME = {step.name: step for step in STEPS}
RECORD_ORDER = (*(step.name for step in STEPS), "check-leaks")   # runs/<name>.json, as read
