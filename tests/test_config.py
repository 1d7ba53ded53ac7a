import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import load_config, parse_overrides, read_yaml
from edge.dashboard.settings import DashboardConfig
from edge.errors import ConfigError
from edge.settings import EdgeConfig
from export.config import ExportConfig
from tests.conftest import run_vqad
from train.config import ModelConfig, ScoreConfig, TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "cls,name",
    [
        (ModelConfig, "model"),
        (TrainConfig, "train"),
        (ExportConfig, "export"),
        (EdgeConfig, "edge"),
        (DashboardConfig, "dashboard"),
    ],
)
def test_shipped_yaml_is_the_documented_default(cls, name):
    assert load_config(cls, CONFIGS / f"{name}.yaml") == cls()


def test_overrides_are_converted_by_field_type():
    cfg = load_config(
        ModelConfig,
        None,
        parse_overrides(
            ["image_size=64", "levels=2", "mean=[0.4,0.5,0.6]", "score.errors=l2,gms", "score.terms=head,errors"]
        ),
    )
    assert cfg.image_size == (64, 64) and cfg.levels == 2
    assert cfg.mean == (0.4, 0.5, 0.6)
    assert cfg.score == ScoreConfig(errors=("l2", "gms"), terms=("head", "errors"))
    assert load_config(EdgeConfig, None, {"threshold": "null"}).threshold is None
    assert load_config(EdgeConfig, None, {"threshold": "0.5"}).threshold == 0.5


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"image_sise": "64"}, "unknown config key"),
        ({"image_size": "big"}, "expected an integer"),
        ({"score": {"errors": "l1"}}, "not one of"),
        ({"image_size": "30"}, "multiple of 16"),
        ({"image_size": "[64, 40]"}, "multiple of 16"),
        ({"image_size": "[64, 64, 3]"}, "N, \\[H, W\\] or auto"),
        ({"image_size": "auto", "short_side": "100"}, "short_side must be >= 16 and a multiple of 16"),
        # The model's own buffers at 20000 x 20000 filled the memory: the kernel killed the process.
        ({"image_size": "20000"}, "is 400,000,000 pixels, more than the 16,777,216"),
        ({"image_size": "auto", "short_side": "8192"}, "short_side 8192 is more than the 4096"),
        ({"score": {"errors": "l2,l2"}}, "duplicates"),
        ({"score": {"terms": "head,glitter"}}, "not one of"),
        ({"head_width": "0"}, "needs a comparison head"),
        ({"levels": "two"}, "expected an integer"),
        ({"cosine": "true"}, "unknown config key"),
        ({"score": {"reference_sigmas": "8,2"}}, "unknown config key"),
        ({"image_size": "[16, 64]", "score": {"border": "8"}}, "leaves nothing"),
    ],
)
def test_bad_config_raises_value_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(ModelConfig, None, overrides)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"device": "tpu"}, "not one of"),
        ({"val_fraction": "0.6"}, "val_fraction"),
        ({"target_frr": "0"}, "target_frr"),
        ({"num_threads": "-2"}, "num_threads must be >= 0"),
        ({"lr": "0.1"}, "unknown config key"),  # a tuned constant, not a user's decision
    ],
)
def test_bad_train_config_raises_value_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(TrainConfig, None, overrides)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"health": {"exposure_margin": "-0.1"}}, "exposure_margin must be >= 0"),  # every frame unfit
        ({"health": {"frozen_after": "0"}}, "frozen_after must be >= 1"),  # every frame "frozen"
        ({"health": {"max_shift": "-1"}}, "max_shift must be >= 0"),
        ({"log_every_s": "0"}, "log_every_s must be > 0"),  # the status line divides by it
        ({"warmup_runs": "-1"}, "warmup_runs must be >= 0"),
        ({"rcvhwm": "0"}, "edge.rcvhwm must be >= 1, got 0"),  # named, not "socket options"
        ({"record_min_free_gb": "-1"}, "record_min_free_gb must be >= 0"),
        ({"max_delay_ms": "10000"}, r"max_delay_ms must be in \[0, 1000\], got 10000"),  # each result 10 s late
    ],
)
def test_bad_edge_config_raises_value_error(overrides, match):
    """Values that would fail every part, or stop the daemon, are refused at the start."""
    from edge.settings import EdgeConfig

    with pytest.raises(ValueError, match=match):
        load_config(EdgeConfig, None, overrides)


def test_config_is_frozen():
    cfg = TrainConfig()
    with pytest.raises(AttributeError):
        cfg.steps = 1  # type: ignore[misc]


def test_a_mapping_setting_is_read_from_yaml_and_added_to_from_the_command_line(tmp_path):
    """Per camera settings (edge.fail_rate_alarm_cameras): a YAML mapping, its keys added to or
    changed by `--set FIELD.KEY=VALUE`, each value converted and checked by the field's type."""
    edge = tmp_path / "edge.yaml"
    edge.write_text("fail_rate_alarm_cameras:\n  press1: 0.05\n  trim: 0\n")
    cfg = load_config(EdgeConfig, edge, parse_overrides(["fail_rate_alarm_cameras.press2=0.3",
                                                         "fail_rate_alarm_cameras.trim=0.1"]))  # fmt: skip
    assert cfg.fail_rate_alarm_cameras == {"press1": 0.05, "trim": 0.1, "press2": 0.3}
    assert load_config(EdgeConfig, None, {"fail_rate_alarm_cameras": "{}"}).fail_rate_alarm_cameras == {}
    dotted = load_config(EdgeConfig, None, parse_overrides(["fail_rate_alarm_cameras.line3.press1=0.1"]))
    assert dotted.fail_rate_alarm_cameras == {"line3.press1": 0.1}  # a camera id with a dot
    with pytest.raises(ConfigError, match=r"fail_rate_alarm_cameras\.press1: expected a number, got 'high'"):
        load_config(EdgeConfig, None, parse_overrides(["fail_rate_alarm_cameras.press1=high"]))
    with pytest.raises(ConfigError, match="fail_rate_alarm_cameras: expected a mapping"):
        load_config(EdgeConfig, None, {"fail_rate_alarm_cameras": ["press1"]})
    with pytest.raises(ConfigError, match="is no camera id"):
        load_config(EdgeConfig, None, {"fail_rate_alarm_cameras": {"": 0.1}})


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml") as refused:
        load_config(TrainConfig, bad)
    assert "\n" not in str(refused.value) and str(refused.value).endswith("at line 2, column 1")  # one log line
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")


def test_a_key_given_twice_is_refused_and_a_merge_key_is_read(tmp_path):
    """PyYAML kept a key's last value: a setting changed at one of its two places in a long file
    was served at the other, without a word."""
    twice = tmp_path / "edge.yaml"
    twice.write_text("max_batch: 8\nqueue_size: 64\nmax_batch: 4\n")
    with pytest.raises(ConfigError, match=r"'max_batch' is given twice \(first at line 1\) at line 3, column 1$"):
        load_config(EdgeConfig, twice)
    twice.write_text("curve:\n  enabled: false\n  enabled: true\n")
    with pytest.raises(ConfigError, match=r"the key 'enabled' is given twice \(first at line 2\) at line 3"):
        load_config(EdgeConfig, twice)
    twice.write_text("base: &base {max_batch: 4, queue_size: 32}\nedge:\n  <<: *base\n  queue_size: 16\n")
    assert read_yaml(twice)["edge"] == {"max_batch": 4, "queue_size": 16}  # a key over a merge's is no repeat


def test_the_map_scale_is_bounded_and_older_configs_take_its_default():
    from edge.config import from_mapping, to_dict
    from train.loop import _changed_keys

    with pytest.raises(ConfigError, match="score.scale"):
        ScoreConfig(scale=0.1)
    saved = to_dict(ModelConfig(image_size=(64, 64)))
    del saved["score"]["scale"]  # a run saved before the key existed
    old = from_mapping(ModelConfig, saved, "model")
    assert old.score.scale == 1.0
    # --resume names what differs, so a run whose scale calibration chose can be resumed under it.
    chosen = to_dict(ModelConfig(image_size=(64, 64), score=ScoreConfig(scale=0.5)))
    assert _changed_keys(chosen, to_dict(old)) == {"score.scale": 0.5}


def test_fused_map_scales_are_finer_distinct_factors_and_a_list_on_the_command_line():
    from edge.config import from_mapping, parse_overrides

    assert ScoreConfig().fuse_scales == (0.7,)
    for bad in ((1.0,), (0.1,), (0.7, 0.7)):
        with pytest.raises(ConfigError, match="score.fuse_scales"):
            ScoreConfig(fuse_scales=bad)
    for text, expected in (("[]", ()), ("[0.5, 0.7]", (0.5, 0.7))):
        values = parse_overrides([f"score.fuse_scales={text}"])
        assert from_mapping(ScoreConfig, values["score"], "model.score").fuse_scales == expected


@pytest.mark.parametrize(
    "endpoint,match",
    [
        ("not-an-endpoint", "not a ZeroMQ endpoint"),
        ("tcp:/127.0.0.1:5556", "not a ZeroMQ endpoint"),
        ("udp://127.0.0.1:5556", "not a ZeroMQ endpoint"),
        ("tcp://127.0.0.1:99999", "a port from 0 to 65535"),  # libzmq would bind another port
        ("tcp://127.0.0.1", "a port from 0 to 65535"),
        ("tcp://:5556", "a port from 0 to 65535"),
    ],
)
def test_a_malformed_endpoint_is_refused_by_name(endpoint, match):
    with pytest.raises(ValueError, match=f"edge.results_endpoint '{re.escape(endpoint)}' .*{match}"):
        load_config(EdgeConfig, None, {"results_endpoint": endpoint})
    with pytest.raises(ValueError, match=match):
        load_config(DashboardConfig, None, {"results": endpoint})


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:5556", "tcp://*:5556", "tcp://[::1]:0", "ipc:///tmp/r", "inproc://r"]
)
def test_the_endpoints_zeromq_takes_are_accepted(endpoint):
    assert load_config(EdgeConfig, None, {"results_endpoint": endpoint}).results_endpoint == endpoint


@pytest.mark.parametrize(
    "args",
    [
        ["watch", "not-an-endpoint", "--count", "1"],
        ["camera", "{images}", "--to", "tcp://127.0.0.1:99999"],
        ["ctl", "tcp://localhost", "status"],
    ],
)
def test_the_line_commands_refuse_a_malformed_endpoint_in_one_line(args, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((32, 32), np.uint8))
    proc = run_vqad(*(a.format(images=images) for a in args), check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "endpoint" in proc.stderr.strip().splitlines()[-1]
