import hashlib

import cv2
import numpy as np
import pytest

from edge.frames import InputFormat
from train.baseline import PixelGaussian
from train.data import load_images, load_test_set, train_image_paths
from train.metrics import image_auroc
from train.synth import CATEGORIES, DEFECT_KINDS, SynthSpec, synth

SMALL = SynthSpec(size=64, n_train=4, n_test_good=2, n_per_defect=1)


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_and_determinism(tmp_path):
    synth(tmp_path / "a", seed=5, spec=SMALL)
    synth(tmp_path / "b", seed=5, spec=SMALL)
    synth(tmp_path / "c", seed=6, spec=SMALL)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    for cat in CATEGORIES:
        root = tmp_path / "a" / cat
        assert len(list((root / "train" / "good").glob("*.png"))) == 4
        for kind in DEFECT_KINDS:
            assert (root / "test" / kind / "000.png").is_file()
            mask = cv2.imread(str(root / "ground_truth" / kind / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
            assert mask is not None and mask.shape == (64, 64) and (mask > 0).any()


def test_masks_are_where_the_image_changed(tmp_path):
    """Re-render the good image from the same stream: every defect pixel differs from it."""
    from train.synth import _category

    spec = SynthSpec(size=128, n_train=1, n_test_good=1, n_per_defect=1)
    for cat in CATEGORIES:
        render, allowed, defects = _category(cat)
        for kind, fn in defects.items():
            rng = np.random.default_rng(42)
            image = render(rng, spec.size)
            out, mask = fn(rng, image.copy(), allowed(image))
            assert mask.any(), (cat, kind)
            changed = np.abs(out - image).max(axis=2) > 1.0
            assert changed[mask].mean() > 0.9, (cat, kind)  # the mask marks changed pixels
            assert changed[~mask].mean() < 0.02, (cat, kind)  # and little changes outside it


@pytest.mark.parametrize("category", CATEGORIES)
def test_defects_are_too_subtle_for_the_per_pixel_gaussian(tmp_path, category):
    spec = SynthSpec(size=128, n_train=60, n_test_good=20, n_per_defect=6)
    synth(tmp_path, seed=0, spec=spec, categories=(category,))
    root = tmp_path / category
    model = PixelGaussian().fit(load_images(train_image_paths(root), InputFormat(128, 3)))
    test = load_test_set(root, InputFormat(128, 3))
    _, scores = model.score(np.stack([s.image for s in test]))
    assert image_auroc(np.array([s.label for s in test]), scores) < 0.85
