"""The training config: defaults, YAML + overrides, clear errors, commented YAML that round-trips."""

import pytest
import yaml

from masksmith.config import TrainConfig, config_to_yaml, resolve_config
from masksmith.errors import ConfigError


def test_overrides_beat_the_yaml_file_and_none_means_not_given(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: some/folder\nepochs: 7\nlr: 0.01\n")
    config = resolve_config(path, epochs=3, lr=None)
    assert (config.data, config.epochs, config.lr) == ("some/folder", 3, 0.01)
    assert config.size == 256  # untouched default


def test_written_yaml_is_commented_and_reloads_to_the_same_config(tmp_path):
    config = resolve_config(None, data="d", epochs=5, model_options={"depth": 3}, augment=[{"name": "HorizontalFlip"}])
    text = config_to_yaml(config, header="repeat with masksmith train --config X")
    assert text.startswith("# repeat with")
    assert "# learning rate (the plan's pretrained encoder: 2e-3)\nlr: 0.001" in text
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert resolve_config(path) == config


@pytest.mark.parametrize("text, fragment", [
    ("data: d\nepochs: 0\n", "epochs"),
    ("data: d\nmodle: unet\n", "unknown option(s) modle"),
    ("data: d\noptimizer: adagrad\n", "optimizer"),
    ("data: d\nchannels: 2\n", "channels must be 1 or 3"),
    ("data: d\nfrozen_stages: 6\n", "frozen_stages"),  # an encoder has 5 stages
    ("data: d\nfrozen_stages: -1\n", "frozen_stages"),
    ("data: d\nfrozen_stages: two\n", "frozen_stages"),
    ("data: d\nrepeat_threshold: 1.5\n", "repeat_threshold"),  # a share of the images
    ("data: d\nrepeat_threshold: -0.1\n", "repeat_threshold"),
    ("data: d\nrepeat_threshold: rare\n", "repeat_threshold"),
    ("- just\n- a list\n", "mapping"),
    ("data: [unclosed\n", "not valid YAML"),
])
def test_bad_config_files_name_the_file_and_the_option(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        resolve_config(path)
    assert str(path) in str(error.value) and fragment in str(error.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        resolve_config(tmp_path / "nope.yaml")


def test_monitor_mode_follows_the_metric():
    assert TrainConfig(data="d", monitor="val_loss").monitor_mode() == "min"
    assert TrainConfig(data="d", monitor="val_miou").monitor_mode() == "max"


def test_every_option_has_a_description():
    assert all(field.description for field in TrainConfig.model_fields.values())
    assert yaml.safe_load(config_to_yaml(TrainConfig(data="d")))["data"] == "d"
