"""Decoded batches for the engines: JPEGs decoded at reduced scale (images.load_array) in worker
processes, a bounded number of batches ahead, so decoding and inference overlap and neither
waits on the other while memory stays bounded.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from curation.images import ImageError, load_array
from curation.lifecycle import checked, process_pool


@dataclass
class Batch:
    """One batch of files: the decoded ones stacked in order, and why the others failed."""

    names: list[str]                 # every file of the batch, in order
    decoded: list[str]               # the files whose pixels are in `pixels`, in order
    pixels: np.ndarray               # uint8 (len(decoded), size, size, 3)
    failed: dict[str, str]           # file -> reason


def decode_batch(job: tuple[list[str], list[str], int]) -> Batch:
    """Decode (names, absolute paths, size) into one Batch; a bad file is a reason, not a raise."""
    names, paths, size = job
    decoded, arrays, failed = [], [], {}
    for name, path in zip(names, paths):
        try:
            arrays.append(load_array(path, size))
            decoded.append(name)
        except ImageError as exc:
            failed[name] = str(exc)[:200]
        except OSError as exc:
            failed[name] = f"unreadable: {exc.strerror or exc}"[:200]
    pixels = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return Batch(list(names), decoded, pixels, failed)


def decoded_batches(names: Sequence[str], paths: Sequence[Path], size: int, batch_size: int, *,
                    workers: int, ahead: int | None = None) -> Iterator[Batch]:
    """Batches of `batch_size` files in order, decoded by `workers` processes at most `ahead`
    batches in advance of the one being used (default: two per worker)."""
    jobs = [(list(names[i:i + batch_size]), [str(p) for p in paths[i:i + batch_size]], size)
            for i in range(0, len(names), batch_size)]
    ahead = ahead or 2 * workers
    with process_pool(workers) as pool:
        queue: deque = deque()
        for job in checked(jobs):
            queue.append(pool.submit(decode_batch, job))
            if len(queue) > ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
