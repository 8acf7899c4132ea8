"""What the report's sections read (Context) and what each declares (Section): its title, how
it is drawn, and which registry step fills it, so whether that step has run comes from the
step's record (runs/<step>.json) and the columns the registry says it adds, not from the page."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from curation.config import DatasetConfig
from curation.registry import BY_NAME
from curation.report import html_page as h
from curation.sheets import thumbnail_data_uri

THUMB = 112


@dataclass
class Context:
    """What every section reads: the manifest, the dataset root, the workdir, the step records."""

    config: DatasetConfig
    workdir: Path
    manifest: pd.DataFrame
    runs: dict
    thumbs: dict = field(default_factory=dict)

    def has(self, *columns: str) -> bool:
        return all(c in self.manifest.columns for c in columns)

    def ran(self, step: str) -> bool:
        """Whether `step` recorded a run and the manifest still holds the columns it adds."""
        return step in self.runs and self.has(*BY_NAME[step].adds)

    def thumb(self, path: str) -> str:
        """The image at manifest path `path` as a JPEG data: URI (cached per report)."""
        if path not in self.thumbs:
            self.thumbs[path] = thumbnail_data_uri(self.config.root / path, THUMB)
        return self.thumbs[path]

    def hint(self, command: str) -> str:
        return f"curate {command} {self.config.name}"


@dataclass(frozen=True)
class Section:
    """One part of the page. `step` (a registry name) is the step whose run fills it; until it
    has run the section shows `waiting` (`{name}`: the dataset's name, for the command to run),
    or, when `waiting` is None, draws what there is already (duplicates: identical bytes)."""

    anchor: str
    title: str
    draw: Callable[[Context], str]
    step: str | None = None     # None: not made by a step (the runs table, the bench's lift)
    waiting: str | None = None

    def body(self, ctx: Context) -> str:
        if self.waiting is not None and self.waits(ctx):
            return h.missing(self.waiting.format(name=ctx.config.name))
        return self.draw(ctx)

    def waits(self, ctx: Context) -> bool:
        """True while the step that fills this section has not run."""
        return self.step is not None and not ctx.ran(self.step)
