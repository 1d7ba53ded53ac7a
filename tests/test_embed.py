import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from tests.conftest import run_vqad


def test_embeddings_have_a_stable_order_and_the_documented_shapes(tiny_run, synth_root, tmp_path):
    folder = synth_root / "bracket" / "test"
    for kind, shape in (("codes", (14, 8, 8)), ("quantized", (14, 8, 8, 8)), ("pooled", (14, 32 + 2 * 8))):
        out = tmp_path / f"{kind}.npz"
        run_vqad("embed", tiny_run, folder, "--out", out, "--kind", kind)
        data = np.load(out)
        assert data[kind].shape == shape, kind
        assert list(data["paths"]) == sorted(data["paths"])
    codes = np.load(tmp_path / "codes.npz")["codes"]
    pooled = np.load(tmp_path / "pooled.npz")["pooled"]
    hist = np.stack([np.bincount(c.ravel(), minlength=32) / c.size for c in codes])
    np.testing.assert_allclose(pooled[:, :32], hist, atol=1e-6)  # the histogram is of the same codes


def test_pooled_embeddings_separate_two_categories(tiny_run, synth_root, tmp_path):
    run_vqad("embed", tiny_run, synth_root / "weave" / "train", "--out", tmp_path / "w.npz")
    run_vqad("embed", tiny_run, synth_root / "bracket" / "train", "--out", tmp_path / "b.npz")
    a, b = np.load(tmp_path / "w.npz")["pooled"], np.load(tmp_path / "b.npz")["pooled"]
    X = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    accuracy = cross_val_score(LogisticRegression(max_iter=2000), X, y, cv=4).mean()
    assert accuracy > 0.9


def test_train_plot_renders_curves(tiny_run, synth_root, tmp_path):
    from train.plots import curves_plot

    assert curves_plot(tiny_run / "metrics.csv", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 5000
    assert not curves_plot(tmp_path / "missing.csv", tmp_path / "x.png")


def test_embed_rejects_a_missing_folder(tiny_run, tmp_path):
    proc = run_vqad("embed", tiny_run, tmp_path / "nope", "--out", tmp_path / "x.npz", check=False)
    assert proc.returncode != 0 and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_embed_names_the_file_it_wrote_and_refuses_a_folder(tiny_run, synth_root, tmp_path):
    """numpy adds `.npz` to a name without it: "wrote emb.txt" named a file that was not there."""
    images = synth_root / "bracket" / "test" / "good"
    proc = run_vqad("embed", tiny_run, images, "--out", tmp_path / "emb.txt", "--kind", "codes")
    assert f"wrote {tmp_path / 'emb.txt.npz'}:" in proc.stdout and not (tmp_path / "emb.txt").exists()
    assert np.load(tmp_path / "emb.txt.npz")["codes"].shape[0] == len(np.load(tmp_path / "emb.txt.npz")["paths"])
    assert [p.name for p in tmp_path.iterdir()] == ["emb.txt.npz"]  # written beside, then renamed: no .tmp left
    (tmp_path / "folder.npz").mkdir()
    refused = run_vqad("embed", tiny_run, images, "--out", tmp_path / "folder.npz", check=False)
    assert refused.returncode != 0 and "is a folder: name the file to write" in refused.stderr
