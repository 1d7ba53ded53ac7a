"""The synthetic-anomaly generator that denoising training and the comparison head learn from."""

import numpy as np

from train import anomalies
from train.anomalies import paint_anomalies, perlin_mask


def _batch(n=24, size=64, channels=3, seed=1):
    return (np.random.default_rng(seed).random((n, size, size, channels)) * 255).astype(np.uint8)


def test_blended_fills_change_exactly_their_mask_and_the_rest_are_untouched():
    batch = _batch()
    painted, masks = paint_anomalies(batch, batch, 0.5, np.random.default_rng(0), discolour_fraction=0.0)
    clean = batch.astype(np.float32) / 255
    assert painted.shape == clean.shape and masks.shape == batch.shape[:3]
    assert painted.dtype == np.float32 and 0 <= painted.min() and painted.max() <= 1
    labelled = masks.reshape(len(batch), -1).max(axis=1) > 0
    assert 0 < labelled.sum() < len(batch)  # about half, never all or none
    for i in range(len(batch)):
        changed = np.abs(painted[i] - clean[i]).max(axis=2) > 1e-6
        assert not (changed & (masks[i] == 0)).any()  # nothing outside the label
        if labelled[i]:
            assert changed[masks[i] > 0].mean() > 0.5  # and the label marks painted pixels


def test_discolour_fraction_of_painted_images_are_discoloured(monkeypatch):
    calls = []
    real = anomalies._discolour
    monkeypatch.setattr(anomalies, "_discolour", lambda *a: calls.append(1) or real(*a))
    batch = _batch(n=200, size=32)
    _, masks = paint_anomalies(batch, batch, 1.0, np.random.default_rng(0), discolour_fraction=0.25)
    assert (masks.reshape(200, -1).max(axis=1) > 0).all()
    assert 30 <= len(calls) <= 70  # discolour_fraction 0.25 of 200


def test_reconstruction_targets_keep_discolourations_only_when_not_restored(monkeypatch):
    discoloured = []
    real = anomalies._discolour
    monkeypatch.setattr(anomalies, "_discolour", lambda *a: (lambda r: discoloured.append(r[0]) or r)(real(*a)))
    batch = _batch(n=40, size=32)
    clean = batch.astype(np.float32) / 255
    painted, masks, targets = paint_anomalies(
        batch,
        batch,
        1.0,
        np.random.default_rng(4),
        discolour_fraction=0.5,
        discolour_restore=False,
        return_targets=True,
    )
    assert 5 <= len(discoloured) <= 35
    kept = [i for i in range(len(batch)) if not np.array_equal(targets[i], clean[i])]
    assert len(kept) == len(discoloured)  # exactly the discoloured images keep their paint
    for i in kept:
        assert np.array_equal(targets[i], painted[i]) and masks[i].sum() > 0  # still labelled for the head
    blended = [i for i in range(len(batch)) if i not in kept]
    assert all(not np.array_equal(painted[i], clean[i]) for i in blended)  # blended fills are restored
    # The same draws restored: every target is the clean image, and the paint is the same.
    painted_r, masks_r, targets_r = paint_anomalies(
        batch, batch, 1.0, np.random.default_rng(4), discolour_fraction=0.5, return_targets=True
    )
    assert np.array_equal(targets_r, clean) and np.array_equal(painted_r, painted) and np.array_equal(masks_r, masks)


def test_discolouration_is_faint_and_labelled_where_the_soft_mask_is_over_half():
    rng = np.random.default_rng(3)
    image = np.full((64, 64, 3), 0.5, np.float32)
    mask = perlin_mask(64, rng)
    painted, label = anomalies._discolour(image, mask, rng)
    delta = np.abs(painted - image).max(axis=2)
    assert 0.03 * 0.5 <= delta[label > 0].max() <= 0.10 + 1e-6
    assert delta[label > 0].min() > 0.03 * 0.5 - 1e-6  # over half the shift inside the label
    assert label.sum() > 0 and set(np.unique(label)) <= {0.0, 1.0}


def test_generator_is_deterministic_for_a_seed_and_handles_grey_images():
    batch = _batch(channels=1)
    a = paint_anomalies(batch, batch, 1.0, np.random.default_rng(7))
    b = paint_anomalies(batch, batch, 1.0, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape == (24, 64, 64, 1) and (a[1].reshape(24, -1).max(axis=1) > 0).all()


def test_min_change_labels_only_the_painted_pixels_that_visibly_moved():
    batch = _batch(n=40, size=32)
    clean = batch.astype(np.float32) / 255
    painted, whole = paint_anomalies(batch, batch, 1.0, np.random.default_rng(5))
    painted_mc, visible = paint_anomalies(batch, batch, 1.0, np.random.default_rng(5), min_change=0.05)
    assert np.array_equal(painted, painted_mc)  # same draws, same pictures: only the label differs
    moved = np.abs(painted - clean).max(axis=3) >= 0.05
    assert np.array_equal(visible, whole * moved)
    assert 0 < visible.sum() < whole.sum()


def test_min_change_leaves_no_label_where_a_fill_put_background_on_background():
    # A uniform dark part: a crop of another such image changes nothing, which DRAEM's
    # whole-mask label calls a defect and the visible-change label does not.
    batch = np.full((30, 32, 32, 1), 28, np.uint8)
    _, whole = paint_anomalies(batch, batch, 1.0, np.random.default_rng(0))
    painted, visible = paint_anomalies(batch, batch, 1.0, np.random.default_rng(0), min_change=0.016)
    unchanged = np.abs(painted - batch / 255.0).reshape(30, -1).max(axis=1) < 1e-6
    assert unchanged.any() and (whole.reshape(30, -1)[unchanged].max(axis=1) > 0).all()
    assert (visible.reshape(30, -1)[unchanged] == 0).all()


def test_blur_fill_removes_detail_and_keeps_the_shape_for_grey_and_colour():
    for channels in (1, 3):
        image = _batch(n=1, size=64, channels=channels)[0].astype(np.float32) / 255
        fill = anomalies._fill(image, image[None], np.random.default_rng(0), ("blur",))
        assert fill.shape == image.shape and 0 <= fill.min() and fill.max() <= 1
        detail = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
        assert detail(fill) < 0.2 * detail(image)


def test_fills_choose_what_is_painted_and_the_default_is_the_three_original_fills():
    batch = _batch(n=16, size=32)
    a = paint_anomalies(batch, batch, 1.0, np.random.default_rng(9))
    b = paint_anomalies(batch, batch, 1.0, np.random.default_rng(9), fills=("crop", "texture", "shift"))
    c = paint_anomalies(batch, batch, 1.0, np.random.default_rng(9), fills=anomalies.FILL_KINDS)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])
