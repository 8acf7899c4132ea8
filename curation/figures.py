"""Matplotlib figures without pyplot: no global backend to set, nothing kept open after saving."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from curation.manifest import atomic_write


def save_png(figure: Figure, out: Path, dpi: int = 110) -> Path:
    """Write figure as a PNG at out, atomically."""
    return atomic_write(Path(out), lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))
