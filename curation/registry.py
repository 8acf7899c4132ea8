"""Every step, declared once: `curate run` runs PIPELINE in order, the report lists the runs in
STEPS order and knows from each step's record and `adds` whether its section is filled, and
cli.py makes a command of each pipeline step and of check-leaks. Adding a step = declaring its
`Step` in its own module and adding it here. The report is a declared step too
(curation/report/step.py) but not listed here: it reads this registry."""
from __future__ import annotations

from curation.dedupe.step import STEP as DEDUPE
from curation.embed.step import STEP as EMBED
from curation.noise.step import STEP as FLAG_NOISE
from curation.review.step import REVIEW, SYNC as REVIEW_SYNC
from curation.scan.step import STEP as SCAN
from curation.split.check_leaks import STEP as CHECK_LEAKS
from curation.split.step import STEP as SPLIT
from curation.steps import Step
from training.steps import EVALUATE, TRAIN

PIPELINE: tuple[Step, ...] = (SCAN, DEDUPE, EMBED, FLAG_NOISE, SPLIT, TRAIN, EVALUATE)
STEPS: tuple[Step, ...] = (SCAN, DEDUPE, EMBED, FLAG_NOISE, REVIEW, REVIEW_SYNC, SPLIT,
                           CHECK_LEAKS, TRAIN, EVALUATE)
NAMES = tuple(step.name for step in PIPELINE)
BY_NAME = {step.name: step for step in STEPS}
RECORD_ORDER = tuple(step.name for step in STEPS)   # runs/<name>.json, as the report lists them
