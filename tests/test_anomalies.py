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


def test_a_grey_image_in_three_channels_gets_grey_defects():
    """With grey_share=1 every fill on a grey image is grey."""
    grey = np.repeat(_batch(channels=1), 3, axis=3)  # a grey camera read as BGR
    painted, masks = paint_anomalies(grey, grey, np.random.default_rng(3), fraction=1.0, min_change=0.0, grey_share=1.0)
    assert masks.any() and (painted == painted[..., :1]).all()


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


def _inner_distance(mask):
    """Each mask pixel's distance to the nearest pixel outside it (outside the frame counts)."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1][mask.astype(bool)]


def test_stroke_masks_are_thin_lines_never_empty():
    from train.anomalies import stroke_mask

    rng = np.random.default_rng(0)
    for shape in ((128, 128), (64, 256)):
        for _ in range(50):
            mask = stroke_mask(shape, rng)
            assert mask.shape == shape and mask.any() and mask.mean() < 0.05
            # At most 3 px wide at 128 px: pixels 3 px deep inside occur only where strokes cross.
            assert (_inner_distance(mask) >= 3).mean() < 0.15


def test_stroke_share_chooses_strokes_or_blobs():
    batch = _batch(n=40, size=128)

    def labelled_share(stroke_share):
        _, masks = paint_anomalies(batch, batch, np.random.default_rng(2), 1.0, 0.0, stroke_share)
        return masks.mean()

    # Strokes cover about 1% of the frame, Perlin blobs about 5%.
    assert labelled_share(1.0) < 0.025 < labelled_share(0.0)


def test_crops_borrow_content_from_whole_images_larger_than_they_are():
    """Training crops are painted from a pool of whole images: the "crop" fill cuts them down."""
    crops, pool = _batch(n=24, size=32), _batch(n=4, size=96, seed=2)
    painted, masks = paint_anomalies(crops, pool, np.random.default_rng(3), fraction=1.0, min_change=0.0)
    assert painted.shape == (24, 32, 32, 3) and (masks.reshape(24, -1).max(axis=1) > 0).all()


def test_repair_ranks_swap_codes_of_one_band_inside_a_mask_and_keep_the_rest():
    from train.anomalies import repair_ranks

    rng = np.random.default_rng(3)
    for shape, grid in (((64, 64), (16, 16)), ((128, 320), (32, 80))):
        for _ in range(20):
            ranks = repair_ranks(shape, grid, 64, rng)
            assert ranks.shape == grid and ranks.dtype == np.int64
            inside = ranks[ranks > 0]
            assert 0 < inside.size < ranks.size  # never empty, never the whole crop
            assert 1 <= inside.min() and inside.max() < 64 and inside.max() - inside.min() < 64 // 8


def test_paste_repair_changes_only_the_swapped_cells_and_keeps_a_grey_crop_grey():
    from train.anomalies import MIN_CHANGE, paste_repair

    grey = np.repeat((np.random.default_rng(0).random((32, 32, 1)) * 255).astype(np.uint8), 3, axis=2)
    ranks = np.zeros((8, 8), dtype=np.int64)
    ranks[2:4, 3:6] = 5  # latent cells 4 pixels on a side
    decoded = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    out, moved = paste_repair(grey, decoded, ranks)
    clean = grey.astype(np.float32) / 255
    changed = np.abs(out - clean).max(axis=2) > 0
    assert moved and out.dtype == np.float32 and changed[8:16, 12:24].mean() > 0.9
    assert not changed[~np.kron(ranks > 0, np.ones((4, 4), dtype=bool))].any()
    assert (out == out[:, :, :1]).all()  # no colour cue on a grey part
    same, moved = paste_repair(grey, clean + MIN_CHANGE / 2, ranks)
    assert not moved  # a change under MIN_CHANGE is no corruption the head could be told of
