import logging
import re

import cv2
import numpy as np
import pytest

from edge.errors import DataError, FrameError
from edge.frames import InputFormat, decode_image, read_image, to_model_input
from train.data import input_scale, load_images, load_test_set, split_train_val, train_image_paths, validation_count


def make_category(root, channels=3, size=(40, 30), fmt="png"):
    rng = np.random.default_rng(0)
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], 3)
    for i in range(4):
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "train" / "good" / f"{i}.{fmt}"), rng.integers(0, 255, shape, dtype=np.uint8))
    for kind in ("good", "scratch"):
        (root / "test" / kind).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "test" / kind / f"0.{fmt}"), rng.integers(0, 255, shape, dtype=np.uint8))
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[5:10, 5:20] = 255
    cv2.imwrite(str(root / "ground_truth" / "scratch" / "0_mask.png"), mask)
    return root


@pytest.mark.parametrize("channels,fmt", [(3, "png"), (1, "png"), (3, "jpg"), (1, "bmp"), (1, "tif")])
def test_loader_reads_colour_and_grey_into_the_model_channels(tmp_path, channels, fmt):
    cat = make_category(tmp_path / "cat", channels=channels, fmt=fmt)
    for model_channels in (1, 3):
        images = load_images(train_image_paths(cat), InputFormat(16, model_channels))
        assert images.shape == (4, 16, 16, model_channels) and images.dtype == np.uint8
    test = load_test_set(cat, InputFormat(16, 3))
    assert [(s.kind, s.label) for s in test] == [("good", 0), ("scratch", 1)]
    assert test[1].mask.shape == (16, 16) and test[1].mask.any() and not test[0].mask.any()


def test_a_16_bit_image_is_read_by_its_top_bits_and_a_12_bit_one_is_named(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("edge.frames._warned_low_bits", False)
    full = np.array([[0, 256, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "full.png"), full)
    with caplog.at_level(logging.WARNING, logger="edge.frames"):
        assert read_image(tmp_path / "full.png").tolist() == [[0, 1, 255]]
        assert not caplog.records
        cv2.imwrite(str(tmp_path / "mono12.tiff"), np.array([[0, 2048, 4095]], np.uint16))
        assert read_image(tmp_path / "mono12.tiff").tolist() == [[0, 8, 15]]
        read_image(tmp_path / "mono12.tiff")
    assert len(caplog.records) == 1 and "12 bits or fewer (max 4095" in caplog.text


def test_resize_is_the_shared_function(tmp_path):
    cat = make_category(tmp_path / "cat")
    path = train_image_paths(cat)[0]
    assert np.array_equal(load_images([path], InputFormat(16, 3))[0], to_model_input(read_image(path), 16, 3))


def test_unreadable_image_is_named_before_training(tmp_path):
    cat = make_category(tmp_path / "cat")
    bad = cat / "train" / "good" / "9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="9.png"):
        load_images(train_image_paths(cat), InputFormat(16, 3))


def test_every_unreadable_training_image_is_named_in_one_error(tmp_path):
    """A folder with several broken files is mended in one go: `vqad train` names each of them,
    in the images it trains on and those it holds out alike, before any step; past ten, the
    rest are counted."""
    from tests.conftest import run_vqad

    cat = make_category(tmp_path / "cat")
    good = cat / "train" / "good"
    (good / "empty.png").write_bytes(b"")
    (good / "cut.png").write_bytes((good / "0.png").read_bytes()[:100])
    proc = run_vqad("train", cat, "--out", tmp_path / "run", "--steps", "1", "--image-size", "16", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "2 of 6 images cannot be read" in last, proc.stderr
    assert "empty.png: empty image data" in last and "cut.png" in last
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    for i in range(11):
        (good / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"13 of 17 images cannot be read: .*; and 3 more$"):
        load_images(train_image_paths(cat), InputFormat(16, 3))


def test_images_that_would_fill_the_memory_are_refused_before_reading(tmp_path, monkeypatch):
    """The kernel kills a process whose array of images fills the memory, without a word: the
    images' need is read against the memory free first, and named."""
    import edge.frames

    cat = make_category(tmp_path / "cat")
    free = edge.frames.available_memory()
    assert free is None or free > 0
    monkeypatch.setattr(edge.frames, "available_memory", lambda: 4 * 64 * 64 * 3 - 1)
    with pytest.raises(
        DataError, match=r"^4 images at 64x64 need 0.0 GiB of memory, and this machine has 0.0 GiB free"
    ):
        load_images(train_image_paths(cat), InputFormat(64, 3))
    assert load_images(train_image_paths(cat), InputFormat(32, 3)).shape == (4, 32, 32, 3)


def test_mask_of_the_wrong_size_is_named(tmp_path):
    cat = make_category(tmp_path / "cat")
    cv2.imwrite(str(cat / "ground_truth" / "scratch" / "0_mask.png"), np.zeros((7, 7), np.uint8))
    with pytest.raises(DataError, match="0_mask.png"):
        load_test_set(cat, InputFormat(16, 3))


def test_a_copy_made_on_a_mac_trains_and_tests_on_its_images_alone(tmp_path):
    """A folder copied from a Mac holds `._NAME.png` beside each image (its metadata: not an
    image) and maybe hidden folders: they are no training images, no test kind, no mask."""
    from edge.frames import find_images

    cat = make_category(tmp_path / "cat")
    for folder in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        for image in list((cat / folder).glob("*.png")):
            (image.parent / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07 Mac OS X metadata")
    (cat / "test" / ".thumbnails").mkdir()
    cv2.imwrite(str(cat / "test" / ".thumbnails" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    assert [p.name for p in train_image_paths(cat)] == ["0.png", "1.png", "2.png", "3.png"]
    test = load_test_set(cat, InputFormat(16, 3))
    assert sorted((s.kind, s.path.name) for s in test) == [("good", "0.png"), ("scratch", "0.png")]
    assert next(s for s in test if s.kind == "scratch").mask.any()
    assert [p.relative_to(cat / "test").as_posix() for p in find_images(cat / "test")] == [
        "good/0.png",
        "scratch/0.png",
    ]


def test_a_folder_of_images_is_searched_through_its_links_each_real_folder_once(tmp_path):
    """`vqad calibrate --defects defs` where `defs/crack` links to a category's defect folder
    found no defect; a link back to a folder above would have no end."""
    from edge.frames import find_images

    cat = make_category(tmp_path / "cat")
    defects = tmp_path / "defs"
    defects.mkdir()
    (defects / "crack").symlink_to(cat / "test" / "scratch", target_is_directory=True)
    (defects / "again").symlink_to(cat / "test" / "scratch", target_is_directory=True)
    (defects / "crack" / "loop").symlink_to(defects, target_is_directory=True)
    (defects / "one.png").symlink_to(cat / "test" / "good" / "0.png")
    found = [p.relative_to(defects).as_posix() for p in find_images(defects)]
    assert found == ["again/0.png", "one.png"]  # the scratch folder by its first way in, by name


def test_missing_folders_are_named_with_the_layout_a_category_needs(tmp_path):
    with pytest.raises(DataError, match=r"missing training folder: .*nothing/train/good \(a category's layout: "):
        train_image_paths(tmp_path / "nothing")
    cat = make_category(tmp_path / "cat")
    import shutil

    shutil.rmtree(cat / "test")
    with pytest.raises(DataError, match="test"):
        load_test_set(cat, InputFormat(16, 3))


def test_good_images_kept_in_subfolders_are_trained_on(tmp_path):
    """A line's good images kept by day: train/good held none of its own, and the training said
    "no images"; `vqad calibrate` read such a folder whole. Hidden folders stay out."""
    import shutil

    cat = make_category(tmp_path / "cat")
    good = cat / "train" / "good"
    flat = train_image_paths(cat)
    for day, images in (("day1", flat[:2]), ("day2", flat[2:])):
        (good / day).mkdir()
        for image in images:
            shutil.move(image, good / day / image.name)
    (good / ".thumbnails").mkdir()
    shutil.copy(good / "day1" / flat[0].name, good / ".thumbnails" / flat[0].name)
    found = train_image_paths(cat)
    assert found == sorted(found) and [p.relative_to(good).as_posix() for p in found] == [
        "day1/0.png",
        "day1/1.png",
        "day2/2.png",
        "day2/3.png",
    ]


def test_a_category_given_as_one_of_its_own_folders_is_pointed_to(tmp_path):
    """`bracket/train/good` or `bracket/test` typed for `bracket`: the error names the category."""
    cat = make_category(tmp_path / "cat")
    for inner in (cat / "train" / "good", cat / "train", cat / "test"):
        with pytest.raises(DataError, match=rf"did you mean {re.escape(str(cat.resolve()))}\?$"):
            train_image_paths(inner)
    with pytest.raises(DataError) as refused:
        train_image_paths(tmp_path / "nothing")
    assert "did you mean" not in str(refused.value)
    # The folder that holds the categories, as `vqad synth data/` writes them.
    for name in ("bolt", "nut", "washer", "zip"):
        make_category(tmp_path / name)
    (tmp_path / "notes").mkdir()
    first = " or ".join(str(tmp_path / name) for name in ("bolt", "cat", "nut"))
    with pytest.raises(DataError, match=re.escape(f"it holds categories: did you mean {first} (or one of 2 more)?")):
        train_image_paths(tmp_path)


def test_defect_without_mask_warns_and_is_left_out_of_pixel_metrics(tmp_path, caplog):
    cat = make_category(tmp_path / "cat")
    (cat / "ground_truth" / "scratch" / "0_mask.png").unlink()
    with caplog.at_level(logging.WARNING):
        test = load_test_set(cat, InputFormat(16, 3))
    assert test[1].label == 1 and test[1].mask is None
    assert "no mask" in caplog.text


@pytest.mark.parametrize("subfolder", ["", "day1/"], ids=["in-the-kind", "in-a-subfolder"])
@pytest.mark.parametrize("layout", ["mvtec_ad", "same_stem", "folder_of_masks"])
def test_masks_are_found_in_the_layouts_public_sets_use(tmp_path, layout, subfolder):
    """Each layout, with the test image in its kind's folder or in a subfolder of it (kept by
    day), its masks in the same subfolder of ground_truth/<kind>."""
    cat = make_category(tmp_path / "cat")
    folder = cat / "ground_truth" / "scratch" / subfolder
    (cat / "ground_truth" / "scratch" / "0_mask.png").unlink()
    if subfolder:
        (cat / "test" / "scratch" / subfolder).mkdir()
        (cat / "test" / "scratch" / "0.png").rename(cat / "test" / "scratch" / subfolder / "0.png")
        folder.mkdir()
    top, bottom = np.zeros((30, 40), np.uint8), np.zeros((30, 40), np.uint8)
    top[0:8, :] = 255
    bottom[22:30, :] = 1  # a class index, as VisA writes it
    if layout == "mvtec_ad":
        cv2.imwrite(str(folder / "0_mask.bmp"), top | bottom * 255)
        cv2.imwrite(str(folder / "0.png"), np.zeros_like(top))  # the MVTec spelling wins
    elif layout == "same_stem":
        cv2.imwrite(str(folder / "0.png"), top | bottom)
    else:
        (folder / "0").mkdir()
        cv2.imwrite(str(folder / "0" / "000.png"), top)
        cv2.imwrite(str(folder / "0" / "001.png"), bottom)
    sample = load_test_set(cat, InputFormat(16, 3))[1]
    assert sample.name == f"{subfolder}0"
    assert sample.mask is not None and sample.mask[:3].all() and sample.mask[-3:].all() and not sample.mask[6:10].any()


def test_test_images_kept_in_subfolders_are_read_each_with_its_own_mask_and_panel(tmp_path, caplog):
    """Defects kept by day, the same file names on two days: the training refused the category
    ("no test images") when every kind's images lay in subfolders. Each image is read with the
    mask of its own subfolder, and gets its own panel in the report."""
    from train.report_page import calibration_panel_path, panel_path

    cat = make_category(tmp_path / "cat")
    for kind in ("good", "scratch"):
        for day in ("day1", "day2"):
            (cat / "test" / kind / day).mkdir()
            cv2.imwrite(str(cat / "test" / kind / day / "0.png"), np.full((30, 40, 3), 90, np.uint8))
        (cat / "test" / kind / "0.png").unlink()
    (cat / "ground_truth" / "scratch" / "0_mask.png").unlink()
    for day, rows in (("day1", slice(0, 8)), ("day2", slice(22, 30))):
        (cat / "ground_truth" / "scratch" / day).mkdir()
        mask = np.zeros((30, 40), np.uint8)
        mask[rows] = 255
        cv2.imwrite(str(cat / "ground_truth" / "scratch" / day / "0_mask.png"), mask)
    with caplog.at_level(logging.WARNING):
        test = load_test_set(cat, InputFormat(16, 3))
    assert [(s.kind, s.name) for s in test] == [
        ("good", "day1/0"),
        ("good", "day2/0"),
        ("scratch", "day1/0"),
        ("scratch", "day2/0"),
    ]
    day1, day2 = test[2].mask, test[3].mask
    assert day1[:3].all() and not day1[-3:].any() and day2[-3:].all() and not day2[:3].any()
    assert not caplog.records  # every mask found its image
    assert len({panel_path(s) for s in test}) == 4
    assert calibration_panel_path(1, "a/0.png") != calibration_panel_path(2, "b/0.png")


def test_a_jpeg_masks_compression_noise_is_no_defect(tmp_path):
    """A JPEG mask's faint values around each edge are not the defect; its marked pixels are."""
    from train.data import read_mask

    drawn = np.zeros((30, 40), np.uint8)
    drawn[10:20, 12:31] = 255
    cv2.imwrite(str(tmp_path / "0_mask.jpg"), drawn)
    assert (cv2.imread(str(tmp_path / "0_mask.jpg"), cv2.IMREAD_GRAYSCALE)[drawn == 0] > 0).any()  # the noise
    mask = read_mask([tmp_path / "0_mask.jpg"], tmp_path / "0.png", (30, 40, 3), (30, 40))
    assert np.array_equal(mask, drawn > 0)


def test_a_mask_folder_with_one_mask_of_the_wrong_size_is_named(tmp_path):
    cat = make_category(tmp_path / "cat")
    (cat / "ground_truth" / "scratch" / "0_mask.png").unlink()
    (cat / "ground_truth" / "scratch" / "0").mkdir()
    cv2.imwrite(str(cat / "ground_truth" / "scratch" / "0" / "000.png"), np.zeros((30, 40), np.uint8))
    cv2.imwrite(str(cat / "ground_truth" / "scratch" / "0" / "001.png"), np.zeros((7, 7), np.uint8))
    with pytest.raises(DataError, match="001.png"):
        load_test_set(cat, InputFormat(16, 3))


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(20)]
    train, val = split_train_val(paths, 0.15, seed=1)
    assert len(val) == 3 and not set(train) & set(val) and len(train) + len(val) == 20
    assert split_train_val(paths, 0.15, seed=1) == (train, val)
    assert split_train_val(paths, 0.15, seed=2) != (train, val)


@pytest.mark.parametrize(
    ("n_images", "expected"),
    [
        (4, 2),  # the two a threshold needs, whatever the share
        (40, 13),  # a third: training keeps two thirds
        (300, 100),  # enough for min_val_images
        (1000, 150),  # val_fraction already holds more than min_val_images
    ],
)
def test_validation_grows_towards_min_val_images_while_training_keeps_two_thirds(n_images, expected):
    assert validation_count(n_images, 0.15, min_val_images=100) == expected
    assert validation_count(n_images, 0.15, min_val_images=0) == max(2, round(0.15 * n_images))


def test_too_few_good_images_to_train_and_calibrate_are_refused(tmp_path):
    with pytest.raises(DataError, match="at least 4 good training images"):
        split_train_val([tmp_path / f"{i}.png" for i in range(3)], 0.15, seed=1)
    train, val = split_train_val([tmp_path / f"{i}.png" for i in range(4)], 0.9, seed=1)
    assert len(train) == 2 and len(val) == 2


def test_split_holds_out_min_val_images(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(30)]
    train, val = split_train_val(paths, 0.15, seed=1, min_val_images=100)
    assert len(val) == 10 and len(train) == 20 and not set(train) & set(val)


def test_long_reading_shows_progress_on_a_terminal_only(tmp_path, monkeypatch):
    import io
    import sys

    from edge import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    cat = make_category(tmp_path / "cat")
    paths = train_image_paths(cat)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert load_images(paths, InputFormat(16, 3)).shape == (4, 16, 16, 3)
        assert ("reading images" in stream.getvalue()) == shown and ("0/4" in stream.getvalue()) == shown


def test_a_set_without_masks_names_a_few_and_counts_the_rest(tmp_path, caplog):
    cat = make_category(tmp_path / "cat")
    (cat / "ground_truth" / "scratch" / "0_mask.png").unlink()
    for i in range(1, 6):
        cv2.imwrite(str(cat / "test" / "scratch" / f"{i}.png"), np.zeros((30, 40, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="train.data"):
        test = load_test_set(cat, InputFormat(16, 3))
    assert sum(s.mask is None for s in test) == 6
    lines = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("no mask for") for m in lines) == 3 and "6 defect image(s) without a mask" in lines[-1]


def test_masks_that_belong_to_no_test_image_are_named(tmp_path, caplog):
    """Masks spelt in a way the loader does not read, or under a kind folder named apart from the
    images', are warned of with a count and an example; a set whose masks all match is quiet."""
    cat = make_category(tmp_path / "cat")
    with caplog.at_level(logging.WARNING, logger="train.data"):
        load_test_set(cat, InputFormat(16, 3))
    assert not caplog.records, caplog.text
    mask = cat / "ground_truth" / "scratch" / "0_mask.png"
    mask.rename(mask.with_name("0_gt.png"))
    (cat / "ground_truth" / "Hole").mkdir()
    cv2.imwrite(str(cat / "ground_truth" / "Hole" / "0_mask.png"), np.zeros((30, 40), np.uint8))
    with caplog.at_level(logging.WARNING, logger="train.data"):
        load_test_set(cat, InputFormat(16, 3))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("no mask for") and str(cat / "test" / "scratch" / "0.png") in lines[0]
    assert "2 mask(s) under" in lines[-1] and "belong to no test image (e.g." in lines[-1], lines


def test_training_images_of_several_shapes_are_named_in_a_warning(caplog):
    """Two cameras' images in one folder train without error, each stretched to the one input;
    the warning names the shapes, so the engineer sees it before judging the model."""
    with caplog.at_level(logging.WARNING, logger="train.data"):
        input_scale([(1250, 500), (1263, 500), (1241, 500)] * 2, (320, 128))  # one camera's spread
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="train.data"):
        scale = input_scale([(1250, 500)] * 6 + [(1024, 1024)] * 2, (320, 128))
    assert scale["camera_size"] == [1250, 500]
    assert "2 of 8 training images read have another aspect ratio than the median (2.500" in caplog.text
    assert "1024x1024 (2)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.data"):  # a second camera of twice the resolution
        input_scale([(1250, 500)] * 6 + [(2500, 1000)] * 2, (320, 128))
    assert len(caplog.records) == 1, caplog.text
    assert "2 of 8 training images read are another size than most (their median 791" in caplog.text
    assert "2500x1000 (2)" in caplog.text and "another scale" in caplog.text


def test_grey_images_among_colour_ones_are_named_in_a_warning(tmp_path, caplog):
    """A mono and a colour camera's images of one shape: the shapes' warnings do not see them.
    A colour file whose three channels are equal is a mono camera's, saved as colour."""
    from train.data import warn_mixed_colour

    rng = np.random.default_rng(0)
    colour = [tmp_path / f"c{i}.png" for i in range(4)]
    for path in colour:
        cv2.imwrite(str(path), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    grey, grey_as_colour = tmp_path / "g.png", tmp_path / "g3.png"
    cv2.imwrite(str(grey), rng.integers(0, 255, (16, 16), dtype=np.uint8))
    cv2.imwrite(str(grey_as_colour), np.repeat(rng.integers(0, 255, (16, 16, 1), dtype=np.uint8), 3, axis=2))
    paths, greys = [*colour, grey, grey_as_colour], []
    load_images(paths, InputFormat(size=(16, 16), channels=3), greys=greys)
    assert greys == [False] * 4 + [True, True]
    with caplog.at_level(logging.WARNING, logger="train.data"):
        warn_mixed_colour(greys[:4], paths[:4], 3)  # one kind: nothing to say
        warn_mixed_colour([True] * 4, paths[:4], 1)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="train.data"):
        warn_mixed_colour(greys, paths, 3)
    assert "2 of 6 good images read are grey (one channel, or three equal ones) and 4 colour" in caplog.text
    assert f"The grey ones: {grey}, {grey_as_colour}. Each is made the model's colour input" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.data"):  # the fewer are colour; a few named
        warn_mixed_colour([False] * 5 + [True] * 6, [tmp_path / f"{i}.png" for i in range(11)], 1)
    assert (
        f"The colour ones: {tmp_path / '0.png'}, {tmp_path / '1.png'}, {tmp_path / '2.png'} and 2 more." in caplog.text
    )
    assert "the model's grey input (model.channels: 1)" in caplog.text


def _write(path, value):
    cv2.imwrite(str(path), np.full((8, 8), value, np.uint8))
    return path


def test_copies_of_an_image_are_trained_on_not_held_out(tmp_path, caplog):
    # 30 different images, and 4 images each saved three times (a folder copied twice, say).
    paths = [_write(tmp_path / f"{i:02d}.png", i) for i in range(30)]
    copies = [_write(tmp_path / f"{k}_copy{c}.png", 100 + k) for k in range(4) for c in range(3)]
    paths = sorted(paths + copies)
    for seed in range(4):
        with caplog.at_level("WARNING", logger="train.data"):
            train, val = split_train_val(paths, 0.15, seed=seed, min_val_images=100)
        assert set(copies) <= set(train) and not set(train) & set(val)
        assert len(val) == validation_count(34, 0.15, 100) == 11  # of the 34 different images
    assert "8 of 42 good training images are copies of another" in caplog.text


def test_images_the_weights_were_trained_on_are_not_held_out(tmp_path, caplog):
    """A fine-tune's split: the images its source's weights were trained on stay in training;
    held out, they would score as learned. With too few others, the threshold's minimum is made
    up from them, and said."""
    from edge.recalibrate import fingerprints

    paths = [_write(tmp_path / f"{i:02d}.png", i) for i in range(40)]
    prints = fingerprints(paths)
    for seed in range(4):
        train, val = split_train_val(paths, 0.15, seed=seed, min_val_images=100, prints=prints, trained_on=prints[:30])
        assert set(val) <= set(paths[30:]) and len(val) == 10 and set(paths[:30]) <= set(train)
    with caplog.at_level("WARNING", logger="train.data"):
        train, val = split_train_val(paths, 0.15, seed=0, trained_on=fingerprints(paths[1:]))
    assert paths[0] in val and len(val) == 2 and "trained on all but 1 of the 40 good images" in caplog.text
    assert "2 held out to calibrate the threshold, not 6, 1 of them trained on" in caplog.text


def test_a_folder_copied_twice_holds_out_both_copies_of_an_image(tmp_path):
    paths = sorted(_write(tmp_path / f"{i:02d}_{c}.png", i) for i in range(12) for c in "ab")
    train, val = split_train_val(paths, 0.15, seed=0)
    stems = lambda ps: {p.name[:2] for p in ps}  # noqa: E731
    assert len(val) >= 2 and not stems(train) & stems(val) and len(train) + len(val) == 24


def test_a_folder_without_copies_splits_as_it_always_did(tmp_path):
    paths = [_write(tmp_path / f"{i:02d}.png", i) for i in range(20)]
    rng_order = np.random.default_rng(3).permutation(20)
    train, val = split_train_val(paths, 0.15, seed=3)
    assert val == sorted(paths[i] for i in rng_order[:3])


def test_good_images_that_are_all_one_image_are_refused(tmp_path):
    paths = [_write(tmp_path / f"{i}.png", 7) for i in range(6)]
    with pytest.raises(DataError, match="hold 1 different ones"):
        split_train_val(paths, 0.15, seed=0)


def test_an_input_larger_than_the_training_images_is_warned_of(caplog):
    """A size typed by hand past the camera's resolution (2048 for 256-pixel images) is warned of:
    it adds no detail and costs the line its pixel count. An input at or under the images' size,
    on either side, is not."""
    with caplog.at_level(logging.INFO, logger="train.data"):
        input_scale([(256, 256)] * 4, (2048, 2048))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "magnifies the training images (median 256x256) 8.0 times" in warnings[0]
    assert "a defect under about 0.25 camera pixels" in caplog.text  # not rounded to "0"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.data"):
        input_scale([(256, 256)] * 4, (256, 256))
        input_scale([(64, 1024)] * 4, (128, 512))  # a strip: more rows, fewer columns
    assert not caplog.records, caplog.text


def test_a_damaged_png_is_refused_by_what_is_wrong_without_a_line_from_libpng(capfd):
    """libpng writes "libpng error: IDAT: CRC error" to the process's stderr for each damaged PNG,
    past the logging's line a minute: a sender of damaged frames would fill the journal. The
    chunks are checked first, and the error says what happened to the bytes."""
    png = bytearray(cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[1])
    assert decode_image(bytes(png)).shape == (64, 64, 3)
    flipped = bytearray(png)
    flipped[200] ^= 0xFF  # inside the first IDAT chunk
    damaged = {
        "flipped": (bytes(flipped), "'IDAT' chunk fails its CRC"),
        "cut": (bytes(png[: len(png) // 2]), "cut short inside its 'IDAT' chunk"),
        "no end": (bytes(png[:-12]), "no IEND chunk"),
    }
    for data, said in damaged.values():
        with pytest.raises(FrameError, match=re.escape(said)):
            decode_image(data)
    assert decode_image(bytes(png) + b"trailing bytes").shape == (64, 64, 3)  # after IEND: not the image's
    assert "libpng" not in capfd.readouterr().err


def test_an_input_format_is_the_models_size_channels_and_bits_whole():
    """Every reader of images takes the model's input as one value, from its training config
    or its package; a config whose size a training has not resolved yet has none."""
    from train.config import ModelConfig

    assert InputFormat(16, 3) == InputFormat((16, 16), 3, 16) and InputFormat([8, 32], 1, 12).size == (8, 32)
    assert ModelConfig(image_size=(32, 64), channels=1, pixel_bits=12).input_format == InputFormat((32, 64), 1, 12)
    with pytest.raises(ValueError, match="still auto"):
        _ = ModelConfig().input_format


def test_a_training_that_holds_out_too_few_images_to_bound_false_rejects_says_so_before_it_trains(tmp_path, caplog):
    """The threshold's weakness was said by vqad eval, after an hour of training; the split knows
    it before the first step."""
    from edge.threshold import ENOUGH_CALIBRATION_IMAGES, frr_upper_bound
    from train.config import ModelConfig, TrainConfig
    from train.loop import load_run_data

    def held_out_of(n: int) -> tuple[int, str]:
        """(images held out of a folder of n, what the split warned)."""
        good = tmp_path / str(n) / "train" / "good"
        good.mkdir(parents=True)
        for i in range(n):
            _write(good / f"{i:03d}.png", i)
        caplog.clear()
        with caplog.at_level("WARNING", logger="train.loop"):
            data = load_run_data(good.parent.parent, ModelConfig(image_size=(16, 16)), TrainConfig())
        return len(data.val_paths), caplog.text

    few, said = held_out_of(10)
    bound = round(100 * frr_upper_bound(few, 0))
    assert few < ENOUGH_CALIBRATION_IMAGES and f"only {few} good images are held out" in said, said
    assert f"at {bound}% at best ({ENOUGH_CALIBRATION_IMAGES} images bring it under 10%)" in said, said
    enough, said = held_out_of(3 * ENOUGH_CALIBRATION_IMAGES)
    assert enough >= ENOUGH_CALIBRATION_IMAGES and "are held out" not in said, said
