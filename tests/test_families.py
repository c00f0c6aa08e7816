"""Labels from how a scan was made: the feature rule, and every defacing family on real anatomy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from defacegan.families import EARS, FAMILIES, generate
from defacegan.features import FACE_MIN_FRACTION, FEATURES, label_from

NOTHING = {name: 0.0 for name in FEATURES}


def test_any_feature_kept_is_a_face():
    own = dict(NOTHING, nose=FACE_MIN_FRACTION)
    assert label_from(own, NOTHING) == "face"
    assert label_from(dict(NOTHING, nose=FACE_MIN_FRACTION - 0.01), NOTHING) == "removed"


def test_foreign_tissue_in_place_of_the_features_is_replaced():
    assert label_from(NOTHING, {name: 0.9 for name in FEATURES}) == "replaced"
    assert label_from(NOTHING, {name: 0.2 for name in FEATURES}) == "removed"
    # A foreign face over a face that is still the subject's own is still a face.
    assert label_from(dict(NOTHING, eyes=1.0), {name: 0.9 for name in FEATURES}) == "face"


def test_features_outside_the_field_of_view_keep_nothing():
    absent = {name: math.nan for name in FEATURES}
    assert label_from(absent, absent) == "removed"
    assert label_from(dict(absent, chin=0.8), absent) == "face"


@pytest.fixture(scope="module")
def bundle(held_out_bundle):
    return held_out_bundle


def test_every_feature_is_found_on_a_real_head(bundle):
    counts = {name: int((bundle.features == 1 + i).sum()) for i, name in enumerate(FEATURES)}
    assert min(counts.values()) >= 20, counts
    assert (bundle.features == EARS).sum() >= 20
    assert bundle.face_region.any() and bundle.brain.any()
    assert not (bundle.face_region & bundle.brain).any()


@pytest.mark.parametrize("family, expected", [
    ("none", {"face"}), ("mask", {"removed"}), ("face_ears", {"removed"}), ("shell", {"removed"}),
    ("fill", {"removed"}), ("crop", {"removed"}), ("blur", {"face"}),
    ("replace_template", {"replaced"}), ("replace_shell", {"replaced"}),
])
def test_each_family_is_labelled_by_what_it_left(bundle, family, expected):
    labels = {generate(bundle, family, np.random.default_rng(seed)).label(bundle.features) for seed in range(3)}
    assert labels == expected


def test_smooth_fills_below_the_eyes_are_faces_and_the_others_are_not(bundle):
    """replace_smooth draws both sides of the line: a fill under the eyes that keeps them (the nose
    mostly filled) is a face; a fill over the whole face region is not, and is `replaced` or
    `removed` by how much of the features the mass covers."""
    labels = {}
    for seed in range(16):
        variant = generate(bundle, "replace_smooth", np.random.default_rng(seed))
        own, _ = variant.shares(bundle.features)
        labels[seed] = variant.label(bundle.features)
        if own["eyes"] >= FACE_MIN_FRACTION:
            assert labels[seed] == "face" and own["nose"] < 0.5, own
        else:
            assert labels[seed] in {"removed", "replaced"}, own
    assert set(labels.values()) == {"face", "removed", "replaced"}, labels


def test_partial_defacings_that_keep_the_eyes_and_nose_are_faces(bundle):
    eyes, nose = 1 + FEATURES.index("eyes"), 1 + FEATURES.index("nose")
    for seed in range(12):
        variant = generate(bundle, "partial", np.random.default_rng(seed))
        own, _ = variant.shares(bundle.features)
        kept = ~variant.removed
        if (kept[bundle.features == eyes].mean() >= 0.9) and (kept[bundle.features == nose].mean() >= 0.9):
            assert variant.label(bundle.features) == "face", own


def test_partial_defacings_include_cuts_that_take_the_nose_and_leave_the_eyes(bundle):
    """The sweep's red zone (80 % of the face removed from below: no nose, eyes kept) is drawn for
    training, and labelled `face`."""
    eyes, nose = 1 + FEATURES.index("eyes"), 1 + FEATURES.index("nose")
    noseless = []
    for seed in range(24):
        variant = generate(bundle, "partial", np.random.default_rng(seed))
        kept = ~variant.removed
        if kept[bundle.features == nose].mean() < FACE_MIN_FRACTION and kept[bundle.features == eyes].mean() >= 0.9:
            noseless.append(variant.label(bundle.features))
    assert len(noseless) >= 3 and set(noseless) == {"face"}


def test_partial_defacings_include_cuts_from_the_front(bundle):
    """A plane from the front (or at an angle) cuts the nose, mouth and chin each in part, where one
    from below takes the chin whole first: the sweep's front red zone is drawn for training too."""
    lower = ("nose", "mouth", "chin")
    from_front = []
    for seed in range(40):
        variant = generate(bundle, "partial", np.random.default_rng(seed))
        own, _ = variant.shares(bundle.features)
        if all(0.02 < own[name] < 0.9 for name in lower) and own["eyes"] >= 0.9:
            from_front.append(variant.label(bundle.features))
    assert len(from_front) >= 2 and set(from_front) == {"face"}


def test_eye_level_cuts_fall_on_both_sides_of_the_eyes(bundle):
    """A learned defacer's cut near the eyes: some draws take the nose and leave the eyes (`face`),
    others take the eyes too (`removed`), and the label follows the eyes, not the family."""
    seen = set()
    for seed in range(16):
        variant = generate(bundle, "eye_level", np.random.default_rng(seed))
        own, _ = variant.shares(bundle.features)
        assert variant.label(bundle.features) == ("face" if own["eyes"] >= FACE_MIN_FRACTION or own["nose"] >= FACE_MIN_FRACTION else "removed")
        assert own["mouth"] < 0.1 and own["chin"] < 0.1, own
        seen.add((variant.label(bundle.features), own["eyes"] >= FACE_MIN_FRACTION, own["nose"] >= FACE_MIN_FRACTION))
    assert {("face", True, False), ("removed", False, False)} <= seen, seen


def test_a_tight_field_of_view_through_the_nose_keeps_a_face(bundle):
    """A field of view whose front edge cuts the nose and lower edge the chin (as Colin27's MNI
    box does) leaves the eyes: `face`; pulled back behind every feature it is `removed`."""
    from defacegan.families import _outside_view

    tight = _outside_view(bundle, "partial", front_mm=20, below_mm=20)
    own, _ = tight.shares(bundle.features)
    assert own["eyes"] >= FACE_MIN_FRACTION and own["chin"] < 1 and tight.label(bundle.features) == "face"
    assert _outside_view(bundle, "crop", front_mm=-8, below_mm=None).label(bundle.features) == "removed"


def test_foreign_faces_vary_from_draw_to_draw_and_stay_foreign(bundle):
    """Two replacements by the template differ inside the region (warp, gain, noise) and agree
    outside it: no single template face for the detector to learn by heart."""
    first, second = (generate(bundle, "replace_template", np.random.default_rng(seed)) for seed in (1, 2))
    both = first.foreign & second.foreign
    assert both.sum() > 1000 and np.abs(first.volume[both] - second.volume[both]).mean() > 0.02
    outside = ~(ndimage.binary_dilation(first.foreign | second.foreign, iterations=8))
    np.testing.assert_allclose(first.volume[outside], second.volume[outside], atol=1e-6)


def test_generation_is_seeded_and_leaves_the_bundle_alone(bundle):
    before = bundle.face.copy()
    first = generate(bundle, "fill", np.random.default_rng(5))
    second = generate(bundle, "fill", np.random.default_rng(5))
    np.testing.assert_array_equal(first.volume, second.volume)
    np.testing.assert_array_equal(bundle.face, before)
    with pytest.raises(ValueError, match="unknown defacing family"):
        generate(bundle, "paint", np.random.default_rng(0))
    assert set(FAMILIES) >= {"mask", "plane", "partial", "replace_template"}


def test_drawn_views_are_cached_and_equal_a_fresh_draw(bundle, tmp_path):
    """`make weights` and `make figures` share drawn views through the cache: what is read back
    is exactly what drawing the head again gives, labels and feature shares included."""
    from defacegan.contract import InputContract
    from defacegan.detector_data import Samples, draw, draw_bundle, write_bundle

    contract = InputContract()
    cache = write_bundle(bundle, tmp_path / f"{bundle.subject}-bundle.npz")
    options = {"families": ("none", "mask"), "draws": 1, "seed": 3}
    drawn = draw([cache], contract, tmp_path, workers=1, **options)
    (stored,) = tmp_path.glob("*-draws-*.npz")
    written = stored.stat().st_mtime_ns
    again = draw([cache], contract, tmp_path, workers=1, **options)
    assert stored.stat().st_mtime_ns == written  # read back, not drawn again
    fresh = draw_bundle(bundle, contract, **options)
    for samples in (drawn, again):
        assert torch.equal(samples.views, fresh.views)
        for fact in Samples.FACTS:
            assert np.array_equal(getattr(samples, fact), getattr(fresh, fact))
    assert fresh.family.tolist() == ["none", "mask"] and fresh.label[0] == 0  # the scan as it is: a face


def test_drawing_runs_as_many_processes_as_the_memory_holds(monkeypatch):
    """One drawing process takes up to 4 GB: the default is one below 8 GB, two from there up,
    and never none."""
    from defacegan import detector_data

    for gigabytes, expected in ((2, 1), (6, 1), (8, 2), (24, 2), (256, 2)):
        pages = gigabytes * 2**30 // 4096
        monkeypatch.setattr(detector_data.os, "sysconf", lambda name, pages=pages: 4096 if name == "SC_PAGE_SIZE" else pages)
        assert detector_data.draw_workers() == expected
    assert detector_data.draw_workers(limit=1) == 1


def test_posed_draws_sit_on_the_grid_where_check_puts_a_file(bundle):
    """A posed draw is placed again by its own head, as `check` places a file: the back, top and
    middle of every posed head are where the contract anchors them (within the 2 mm of a voxel
    or two), not where the pose's turn and shift of up to 12 mm left them."""
    from defacegan.contract import InputContract
    from defacegan.detector_data import draw_volumes

    contract = InputContract()
    volumes, _ = draw_volumes(bundle, contract, families=("none", "plane"), draws=3, seed=1000)
    middle = (np.asarray(contract.shape) - 1) / 2 * contract.spacing
    offsets = [np.abs(contract.place(volume[0].numpy(), contract.grid_affine).centre - middle).max() for volume in volumes]
    assert max(offsets) <= 2 * contract.spacing, offsets
    assert volumes.dtype == torch.float32 and volumes.min() >= 0 and torch.equal(volumes, volumes.half().float())


def test_a_second_round_adds_draws_and_keeps_the_first(bundle, tmp_path):
    """More rounds draw only the new ones: round 0 is read back from its cache file, and round 1's
    draws, numbered after round 0's, are what drawing with the next seed gives."""
    from defacegan.contract import InputContract
    from defacegan.detector_data import draw, draw_bundle, write_bundle

    contract = InputContract()
    cache = write_bundle(bundle, tmp_path / f"{bundle.subject}-bundle.npz")
    options = {"families": ("none",), "draws": 2, "seed": 5}
    first = draw([cache], contract, tmp_path, workers=1, **options)
    (round_zero,) = tmp_path.glob("*-draws-*.npz")
    written = round_zero.stat().st_mtime_ns
    both = draw([cache], contract, tmp_path, workers=1, rounds=2, **options)
    assert round_zero.stat().st_mtime_ns == written and len(list(tmp_path.glob("*-draws-*.npz"))) == 2
    assert both.number.tolist() == [0, 1, 2, 3]
    assert torch.equal(both.views[:2], first.views)
    next_seed = draw_bundle(bundle, contract, families=("none",), draws=2, seed=6)
    assert torch.equal(both.views[2:], next_seed.views)


def test_draws_under_a_coil_field_are_cached_apart_from_the_plain_ones(bundle, tmp_path):
    """``bias_field`` is part of the recipe: drawn with it, the views go to their own cache file and
    differ from the plain draws; without it, the draws are the plain ones."""
    from defacegan.contract import InputContract
    from defacegan.detector_data import draw, draw_bundle, write_bundle

    contract = InputContract()
    cache = write_bundle(bundle, tmp_path / f"{bundle.subject}-bundle.npz")
    options = {"families": ("none",), "draws": 1, "seed": 5, "pose": None, "field_of_view": None}
    plain = draw([cache], contract, tmp_path, workers=1, **options)
    biased = draw([cache], contract, tmp_path, workers=1, bias_field={"prob": 1.0, "coefficients": 0.6}, **options)
    assert len(list(tmp_path.glob("*-draws-*.npz"))) == 2 and not torch.equal(plain.views, biased.views)
    assert torch.equal(plain.views, draw_bundle(bundle, contract, **options).views)


def test_a_field_of_view_that_stops_above_the_mouth_keeps_the_verdict_of_the_rest(bundle):
    """`cut_below` (the field of view's lower edge, raised on some draws of every family) removes
    the mouth and chin and nothing above: an intact head stays `face`, a defaced one `removed`."""
    from defacegan.families import cut_below

    chin = 1 + FEATURES.index("chin")
    intact = cut_below(bundle, generate(bundle, "none", np.random.default_rng(0)), 40.0)
    assert intact.removed[bundle.features == chin].mean() > 0.9 and intact.label(bundle.features) == "face"
    assert not intact.removed[bundle.features == 1 + FEATURES.index("eyes")].any()
    defaced = cut_below(bundle, generate(bundle, "mask", np.random.default_rng(0)), 40.0)
    assert defaced.label(bundle.features) == "removed" and (defaced.volume[intact.removed] == 0).all()


def test_the_draw_cache_key_follows_the_code_not_its_comments_or_docstrings(tmp_path):
    from defacegan.detector_data import source_key

    first, reworded, changed = (tmp_path / name for name in ("first.py", "reworded.py", "changed.py"))
    first.write_text('"""Module."""\n\ndef cut(x):\n    """Why."""\n    return x + 1  # one\n')
    reworded.write_text('"""Module, reworded\nover two lines."""\n\n\ndef cut(x):\n    """Why, said otherwise."""\n    return (x\n            + 1)\n')
    changed.write_text('"""Module."""\n\ndef cut(x):\n    """Why."""\n    return x + 2  # one\n')
    assert source_key(first) == source_key(reworded) != source_key(changed)


def test_a_coil_field_darkens_the_own_tissue_and_leaves_what_the_defacer_wrote(bundle):
    """A bias field is the scanner's: it scales the subject's own voxels smoothly and never the
    voxels a defacer zeroed, filled or pasted after the scan; the same generator draws the same field."""
    from defacegan.detector_data import with_bias_field

    variant = generate(bundle, "replace_template", np.random.default_rng(0))
    biased = with_bias_field(variant, 0.8, np.random.default_rng(1))
    written = variant.removed | variant.foreign
    assert np.array_equal(biased.volume[written], variant.volume[written])
    own = ~written & (variant.volume > 0.1 * variant.volume.max())
    ratio = biased.volume[own] / variant.volume[own]
    assert ratio.min() < 0.8 and ratio.max() > 1.2, (ratio.min(), ratio.max())
    assert np.array_equal(biased.volume, with_bias_field(variant, 0.8, np.random.default_rng(1)).volume)
    assert (biased.family, biased.removed is variant.removed, biased.foreign is variant.foreign) == ("replace_template", True, True)
