from pathlib import Path

import pytest

from edge.config import load_config, parse_overrides
from edge.errors import ConfigError
from edge.settings import EdgeConfig
from export.config import ExportConfig
from train.config import ModelConfig, ScoreConfig, TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "cls,name",
    [(ModelConfig, "model"), (TrainConfig, "train"), (ExportConfig, "export"), (EdgeConfig, "edge")],
)
def test_shipped_yaml_is_the_documented_default(cls, name):
    assert load_config(cls, CONFIGS / f"{name}.yaml") == cls()


def test_overrides_are_converted_by_field_type():
    cfg = load_config(
        ModelConfig,
        None,
        parse_overrides(
            ["image_size=64", "cosine=true", "mean=[0.4,0.5,0.6]", "score.errors=l2,gms", "score.terms=head,errors"]
        ),
    )
    assert cfg.image_size == 64 and cfg.cosine is True
    assert cfg.mean == (0.4, 0.5, 0.6)
    assert cfg.score == ScoreConfig(errors=("l2", "gms"), terms=("head", "errors"))
    assert load_config(EdgeConfig, None, {"threshold": "null"}).threshold is None
    assert load_config(EdgeConfig, None, {"threshold": "0.5"}).threshold == 0.5


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"image_sise": "64"}, "unknown config key"),
        ({"image_size": "big"}, "expected an integer"),
        ({"codebook": "kmeans"}, "not one of"),
        ({"image_size": "30"}, "divisible"),
        ({"score": {"errors": "l2,l2"}}, "duplicates"),
        ({"score": {"terms": "head,memory"}}, "not one of"),
        ({"head_width": "0"}, "needs a comparison head"),
        ({"cosine": "maybe"}, "true/false"),
        ({"score": {"reference_sigmas": "8,2"}}, "unknown config key"),
    ],
)
def test_bad_config_raises_value_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(ModelConfig, None, overrides)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"anomaly_fills": "crop,glitter"}, "not one of"),
        ({"anomaly_fills": "blur,blur"}, "duplicates"),
        ({"anomaly_min_change": "1.5"}, "anomaly_min_change"),
        ({"head_loss": "jaccard"}, "not one of"),
    ],
)
def test_bad_train_config_raises_value_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(TrainConfig, None, overrides)


def test_anomaly_fills_override_is_converted_to_a_tuple_of_kinds():
    cfg = load_config(TrainConfig, None, {"anomaly_fills": "crop,texture,shift,blur"})
    assert cfg.anomaly_fills == ("crop", "texture", "shift", "blur")


def test_config_is_frozen():
    cfg = TrainConfig()
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(TrainConfig, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
