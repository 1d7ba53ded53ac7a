"""The synthetic-anomaly generator that denoising training and the comparison head learn from."""

import numpy as np

from train.anomalies import paint_anomalies


def _batch(n=24, size=64, channels=3, seed=1):
    return (np.random.default_rng(seed).random((n, size, size, channels)) * 255).astype(np.uint8)


def test_blended_fills_change_exactly_their_mask_and_the_rest_are_untouched():
    batch = _batch()
    painted, masks = paint_anomalies(batch, batch, np.random.default_rng(0), fraction=0.5, min_change=0.0)
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


def test_generator_is_deterministic_for_a_seed_and_handles_grey_images():
    batch = _batch(channels=1)
    a = paint_anomalies(batch, batch, np.random.default_rng(7), fraction=1.0, min_change=0.0)
    b = paint_anomalies(batch, batch, np.random.default_rng(7), fraction=1.0, min_change=0.0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape == (24, 64, 64, 1) and (a[1].reshape(24, -1).max(axis=1) > 0).all()


def test_min_change_labels_only_the_painted_pixels_that_visibly_moved():
    batch = _batch(n=40, size=32)
    clean = batch.astype(np.float32) / 255
    painted, whole = paint_anomalies(batch, batch, np.random.default_rng(5), fraction=1.0, min_change=0.0)
    painted_mc, visible = paint_anomalies(batch, batch, np.random.default_rng(5), fraction=1.0, min_change=0.05)
    assert np.array_equal(painted, painted_mc)  # same draws, same pictures: only the label differs
    moved = np.abs(painted - clean).max(axis=3) >= 0.05
    assert np.array_equal(visible, whole * moved)
    assert 0 < visible.sum() < whole.sum()


def test_min_change_leaves_no_label_where_a_fill_put_background_on_background():
    # A uniform dark part: a crop of another such image changes nothing, which DRAEM's
    # whole-mask label calls a defect and the visible-change label does not.
    batch = np.full((30, 32, 32, 1), 28, np.uint8)
    _, whole = paint_anomalies(batch, batch, np.random.default_rng(0), fraction=1.0, min_change=0.0)
    painted, visible = paint_anomalies(batch, batch, np.random.default_rng(0), fraction=1.0)  # MIN_CHANGE
    unchanged = np.abs(painted - batch / 255.0).reshape(30, -1).max(axis=1) < 1e-6
    assert unchanged.any() and (whole.reshape(30, -1)[unchanged].max(axis=1) > 0).all()
    assert (visible.reshape(30, -1)[unchanged] == 0).all()
