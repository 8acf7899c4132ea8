"""The pure dedupe core: keeper rule, components, match rules, and planted copies of real photos."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from PIL import Image

from curation.dedupe.embedding import MIN_ALIGNMENT, NOT_ALIGNED
from curation.dedupe.evaluation import NEAR_TRANSFORMS, pair_scores, plant, transform
from curation.dedupe.geometry import THUMB_SIDE, alignment_scores, high_pass, thumbnails
from curation.dedupe.grouping import (alignments_for, choose_keepers, components, equal_key_pairs,
                               group_duplicates, hash_matches, thresholds_for)
from curation.dedupe.hashing import hash_columns, hash_files, to_uint64


def test_keeper_rule_most_pixels_then_least_compressed_then_path():
    rows = pd.DataFrame({"path": ["a", "b", "c", "d", "e", "f", "g"],
                         "width": [100, 200, 100, 100, 50, 50, 10],
                         "height": [100, 200, 100, 100, 50, 50, 10],
                         "bytes": [900, 3000, 500, 800, 700, 700, 10]})
    labels = np.array([0, 0, 1, 1, 2, 2, -1])
    out = choose_keepers(rows, labels)
    assert out["keeper"].tolist() == [False, True, False, True, True, False, False]
    assert out["keeper_reason"].tolist()[:6] == ["most pixels"] * 2 + ["least compressed"] * 2 \
        + ["first path"] * 2
    assert out["dup_group"].tolist()[:6] == [1, 1, 2, 2, 3, 3] and pd.isna(out["dup_group"][6])


def test_components_and_equal_keys_are_pure():
    labels = components(5, np.array([0, 3]), np.array([1, 4]))
    assert labels[0] == labels[1] != labels[3] == labels[4] and labels[2] == -1
    i, j = equal_key_pairs(["x", None, "x", "y", "x"])
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 2), (0, 4)]


def test_thresholds_and_alignments():
    assert thresholds_for(["phash"], None) == {"phash": 6}
    assert thresholds_for(["phash", "dhash"], None) == {"phash": 8, "dhash": 8}
    assert thresholds_for(["phash", "ahash"], 3) == {"phash": 3, "ahash": 3}
    with pytest.raises(ValueError, match="threshold"):
        thresholds_for(["phash"], 65)
    assert set(alignments_for(False)) == {"near", "cropped"}
    assert set(alignments_for(True)) == {"near", "cropped", "mirrored", "mirrored+cropped"}


def test_every_kind_must_agree_and_mirrors_need_three_quarters_of_the_threshold():
    one = np.uint64(0)
    far = np.uint64((1 << 10) - 1)            # 10 bits away
    near = np.uint64((1 << 4) - 1)            # 4 bits away
    other = np.uint64(2**64 - 1)              # at least 54 bits from all of the above
    hashes = {"phash": np.array([one, near, one]), "dhash": np.array([one, one, far]),
              "phash_mirror": np.array([other] * 3), "dhash_mirror": np.array([other] * 3),
              "phash_inner": np.array([other] * 3), "dhash_inner": np.array([other] * 3),
              "phash_mirror_inner": np.array([other] * 3),
              "dhash_mirror_inner": np.array([other] * 3)}
    i, j = np.array([0, 0]), np.array([1, 2])
    out = hash_matches(i, j, hashes, {"phash": 8, "dhash": 8}, alignments_for(True))
    assert out["match"].tolist() == [True, False]           # pair 0-2: dhash disagrees
    assert out["alignment"][0] == "near" and out["distance"][0] == 4
    six = np.uint64((1 << 6) - 1)             # 6 bits away: within 3/4 of 8, not of 7
    mirrored = dict(hashes, phash=np.array([one, far, far]),
                    phash_mirror=np.array([other, six, other]),
                    dhash_mirror=np.array([other, one, other]))
    strict = hash_matches(np.array([0]), np.array([1]), mirrored, {"phash": 7, "dhash": 7},
                          alignments_for(True))
    loose = hash_matches(np.array([0]), np.array([1]), mirrored, {"phash": 8, "dhash": 8},
                         alignments_for(True))
    assert not strict["match"][0] and loose["match"][0] and loose["alignment"][0] == "mirrored"


@pytest.mark.real_data
def test_planted_copies_of_real_photos(curate_data, tmp_path):
    """Real Stanford Cars photos: every planted edit is grouped with its original, nothing else."""
    sources = [sorted(folder.glob("*.jpg"))[0]
               for folder in sorted((curate_data / "stanford-cars-25").iterdir())[:12]]
    truth = plant(sources, tmp_path / "copies", seed=1, exact_every=4)
    assert set(truth["transform"]) >= set(NEAR_TRANSFORMS)
    paths = truth["path"].tolist()
    frame = hash_files(paths, ["phash", "dhash"], workers=1, quiet=True)
    hashes = {c: to_uint64(frame[c]) for c in hash_columns(["phash", "dhash"])}
    rows = pd.DataFrame({"path": paths, "width": 1, "height": 1,
                         "bytes": [os.path.getsize(p) for p in paths],
                         "sha256": [hashlib.sha256(Path(p).read_bytes()).hexdigest()
                                    for p in paths]})
    groups = group_duplicates(rows, hashes, {"phash": 8, "dhash": 8})["dup_group"]
    score = pair_scores(groups.to_numpy(dtype="float64", na_value=np.nan),
                        truth["family"].to_numpy())
    assert score["precision"] == 1.0
    assert score["recall"] >= 0.9, score




def _table(phash: list[int], dhash: list[int] | None = None) -> dict[str, np.ndarray]:
    """Hash arrays for hand-made pictures: given plain hashes, every other variant far away."""
    far = np.full(len(phash), np.uint64(2**64 - 1))
    plain = {"phash": np.array(phash, dtype=np.uint64),
             "dhash": np.array(dhash or [0] * len(phash), dtype=np.uint64)}
    return {f"{kind}{variant}": values if not variant else far
            for kind, values in plain.items()
            for variant in ("", "_mirror", "_inner", "_mirror_inner")}


def _rows(n: int) -> pd.DataFrame:
    """n distinct files, the first one the largest (so the keepers are predictable)."""
    return pd.DataFrame({"path": [f"{k}.jpg" for k in range(n)], "width": 100 - np.arange(n),
                         "height": 100, "bytes": 1000, "sha256": [f"s{k}" for k in range(n)]})


def _textures(*kinds: int):
    """A thumbnails callback: row k gets texture kinds[k] (equal kinds: the same picture)."""
    made = {k: high_pass(np.random.default_rng(k).normal(128, 40, (THUMB_SIDE, THUMB_SIDE)))
            for k in set(kinds)}
    return lambda index: [made[kinds[row]] for row in index]


def test_embedding_stage_joins_close_vectors_whose_hashes_agree_loosely_and_pictures_align():
    bits = (1 << 11) - 1                        # 11 bits: beyond the threshold, within 12
    hashes = _table([0, bits, bits << 20, 2**40 - 1, bits << 30])
    vectors = np.array([[1.0, 0.0], [0.95, 0.1], [0.0, 1.0], [1.0, 0.01], [0.95, 0.1]])
    thresholds = {"phash": 8, "dhash": 8}
    pictures = _textures(0, 0, 0, 0, 1)          # row 4: close in every summary, another picture
    alone = group_duplicates(_rows(5), hashes, thresholds)
    assert alone["dup_group"].isna().all()
    out = group_duplicates(_rows(5), hashes, thresholds, vectors=vectors, thumbnails=pictures)
    assert out["dup_group"][0] == out["dup_group"][1]
    assert out["dup_reason"][1].startswith("embedding: cosine 0.99") and \
        "aligned 1.00, phash 11" in out["dup_reason"][1]
    assert pd.isna(out["dup_group"][2])         # its hashes agree, its embedding does not
    assert pd.isna(out["dup_group"][3])         # same embedding, 40 bits apart: another picture
    assert pd.isna(out["dup_group"][4])         # the geometric check finds no alignment
    nan = vectors.copy()
    nan[1] = np.nan                             # not embedded: hash rules only
    assert group_duplicates(_rows(5), hashes, thresholds, vectors=nan,
                            thumbnails=pictures)["dup_group"].isna().all()
    with pytest.raises(ValueError, match="thumbnails"):
        group_duplicates(_rows(5), hashes, thresholds, vectors=vectors)


def test_with_embeddings_a_hash_match_the_pictures_refute_does_not_join():
    hashes = _table([0, 2**5 - 1, 2**5 - 1])    # all within 8 bits of each other
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    out = group_duplicates(_rows(3), hashes, {"phash": 8, "dhash": 8}, vectors=vectors,
                           thumbnails=_textures(0, 1, 1))
    assert pd.isna(out["dup_group"][0]) and out["dup_group"][1] == out["dup_group"][2]


def test_chained_groups_are_cut_where_members_are_not_pairwise_alike():
    steps = [0, 2**8 - 1, 2**16 - 1, 2**24 - 1]  # each 8 bits from the next: a chain
    out = group_duplicates(_rows(4), _table(steps), {"phash": 8, "dhash": 8}, group_bits=16)
    assert out["dup_group"][:3].nunique() == 1 and pd.isna(out["dup_group"][3])
    assert out["dup_split"][:3].str.startswith("cut from a chained group of 4 into 2").all()
    assert "linked through other copies" in out["dup_reason"][2]
    whole = group_duplicates(_rows(4), _table(steps), {"phash": 8, "dhash": 8}, group_bits=24)
    assert whole["dup_group"].nunique() == 1 and whole["dup_split"].isna().all()


def test_reasons_name_the_rule_and_the_bits():
    hashes = _table([0, 2**5 - 1, 0], [0, 2**3 - 1, 0])
    rows = _rows(3).assign(sha256=["a", "b", "a"])
    out = group_duplicates(rows, hashes, {"phash": 8, "dhash": 8})
    assert out["dup_reason"].tolist()[1:] == ["near: phash 5, dhash 3 bits", "exact: same bytes"]


def test_a_closer_embedding_allows_hashes_further_apart():
    eighteen = (1 << 18) - 1                    # 18 bits: only the cosine >= 0.85 tier allows it
    hashes = _table([0, eighteen, 0, eighteen << 20])
    vectors = np.array([[1.0, 0.0], [0.96, 0.2], [0.0, 1.0], [0.8, 0.6]])   # 0.98, -, 0.80
    out = group_duplicates(_rows(4), hashes, {"phash": 8, "dhash": 8}, vectors=vectors,
                           thumbnails=_textures(0, 0, 1, 0))
    assert out["dup_group"][0] == out["dup_group"][1] and pd.isna(out["dup_group"][3])


def test_geometric_check_finds_an_edited_copy_and_refutes_another_picture(tmp_path):
    def photo(seed: int) -> Image.Image:
        noise = np.random.default_rng(seed).normal(128, 60, (24, 32, 3)).clip(0, 255)
        return Image.fromarray(noise.astype(np.uint8)).resize((320, 240), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(0)
    edited = photo(1)
    for edit in ("crop", "mirror", "brightness", "text", "resize"):
        edited = transform(edited, edit, rng)
    paths = []
    for name, picture in (("a", photo(1)), ("copy", edited), ("other", photo(2))):
        paths.append(tmp_path / f"{name}.jpg")
        picture.save(paths[-1], quality=50)
    made = dict(enumerate(thumbnails(paths, workers=1)))
    copy, other = alignment_scores(made, [0, 0], [1, 2])
    assert copy >= MIN_ALIGNMENT and other < NOT_ALIGNED
