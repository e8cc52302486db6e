"""The network stage: every name in the config is checked before any data is read, with the closest
valid name; the builder's options and the output head follow from the config."""

from __future__ import annotations

import pytest

import masksmith
from masksmith.config import TrainConfig
from masksmith.errors import ConfigError
from masksmith.training.network import bundle_options, model_arguments, output_channels


@pytest.mark.parametrize("options, message", [
    ({"model": "unte"}, "unknown model 'unte'; valid names: fcn-lite, "),
    ({"model": "unte"}, "(did you mean 'unet'?)"),
    ({"loss": "dcie+ce"}, "unknown loss 'dcie' in 'dcie+ce'; valid losses: bce, ce, dice, focal (did you mean 'dice'?)"),
    ({"augment": "uprigth"}, "unknown augmentation 'uprigth'; valid names: default, elastic, light, none, oriented, upright "
                             "(did you mean 'upright'?)"),
    ({"encoder": "mobilenet_v3"}, "(did you mean 'mobilenet_v2'?)"),
    ({"monitor": "val_dcie"}, "unknown metric 'val_dcie' (did you mean 'val_dice'?)"),
    ({"epoch": 3}, "unknown option(s) epoch (did you mean 'epochs'?)"),
])
def test_a_bad_name_fails_before_the_data_is_read(tmp_path, options, message):
    # The data folder does not exist: a name error shows that names are checked first.
    with pytest.raises(ConfigError) as error:
        masksmith.train(tmp_path / "no-such-data", out=str(tmp_path / "run"), quiet=True, **options)
    assert message in str(error.value)
    assert not (tmp_path / "run" / "plan.json").exists()


def test_unknown_yaml_keys_get_a_suggestion(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: d\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) batchsize \(did you mean 'batch_size'\?\)"):
        masksmith.train(config=path)


def test_model_arguments_and_head():
    config = TrainConfig(data="d", model="unet", encoder="mobilenet_v2", weights="imagenet",
                         model_options={"depth": 4})
    arguments = model_arguments(config)
    assert arguments == {"depth": 4, "encoder": "mobilenet_v2", "weights": "imagenet"}
    assert bundle_options(arguments)["weights"] is None  # the bundle holds the weights itself
    assert output_channels(TrainConfig(data="d", binary_head="sigmoid"), 2) == 1
    assert output_channels(TrainConfig(data="d", binary_head="sigmoid"), 3) == 3
    with pytest.raises(ConfigError, match="given twice"):
        model_arguments(TrainConfig(data="d", encoder="mobilenet_v2", model_options={"encoder": "efficientnet_lite0"}))
