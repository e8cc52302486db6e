"""`train --init BUNDLE`: fine-tuning starts from the bundle's weights and network; other classes, and paths
that are no bundle, are refused in one line before training."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from typer.testing import CliRunner

import masksmith
from masksmith.bundle import load_bundle, read_meta
from masksmith.cli.app import app as cli_app
from masksmith.errors import BundleError, ConfigError
from tests.helpers import make_shapes_dataset


class StartingWeights(Callback):
    """The network's state when training starts, before the first optimizer step."""

    def __init__(self):
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer, module):
        self.state = {k: v.detach().clone() for k, v in module.network.state_dict().items()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A tiny 3-class model trained on the shapes: (data, bundle); a crop-trained one, size 32, so the
    fine-tuning run below must take these settings from the bundle (its own plan would choose others)."""
    root = tmp_path_factory.mktemp("init")
    data = make_shapes_dataset(root / "shapes", count=8, size=(40, 56))
    run = masksmith.train(data, size=32, resize="random_crop", epochs=1, batch_size=4, auto=False,
                          model_options={"base_channels": 4, "depth": 2}, mean=[0.4, 0.4, 0.4], std=[0.3, 0.3, 0.3],
                          early_stopping=0, out=str(root / "run"), quiet=True)
    return data, run.bundle


@pytest.mark.slow
def test_fine_tuning_starts_from_the_bundles_weights_and_network(first_run, tmp_path):
    data, bundle = first_run
    meta, weights = load_bundle(bundle)
    seen = StartingWeights()
    run = masksmith.train(data, init=str(bundle), epochs=1, max_time=1, out=str(tmp_path / "tuned"), quiet=True,
                          callbacks=[seen])
    assert seen.state is not None and seen.state.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(seen.state[name], tensor), name
    tuned = read_meta(run.bundle)
    assert (tuned.model, tuned.model_options, tuned.size, tuned.resize) == (meta.model, meta.model_options, 32,
                                                                            "random_crop")
    assert tuned.mean == meta.mean and tuned.std == meta.std and tuned.class_names == meta.class_names
    _, tuned_weights = load_bundle(run.bundle)
    assert any(not torch.equal(tuned_weights[k], weights[k]) for k in weights)  # it did train
    # Given options still win over the bundle's (the size: the network is fully convolutional).
    seen_given = StartingWeights()
    given = masksmith.train(data, init=str(bundle), size=48, epochs=1, auto=False, out=str(tmp_path / "given"),
                            quiet=True, callbacks=[seen_given])
    assert read_meta(given.bundle).size == 48
    assert all(torch.equal(seen_given.state[k], weights[k]) for k in weights)


def test_other_classes_are_refused_naming_both_lists(first_run, tmp_path):
    _, bundle = first_run
    other = make_shapes_dataset(tmp_path / "other", count=8, size=(40, 56))
    (other / "classes.txt").write_text("background\nred square\nblue box\n")
    with pytest.raises(ConfigError, match=r"the bundle's classes \[background, red box, blue box\] are not the "
                                          r"data's \[background, red square, blue box\]"):
        masksmith.train(other, init=str(bundle), epochs=1, auto=False, out=str(tmp_path / "run"), quiet=True)
    assert not (tmp_path / "run" / "model.msb").exists()


def test_weights_that_do_not_fit_the_given_architecture_are_one_line(first_run, tmp_path):
    data, bundle = first_run
    with pytest.raises(BundleError, match=r"--init .*: its weights do not fit the network of this run"):
        masksmith.train(data, init=str(bundle), model_options={"base_channels": 8, "depth": 2}, epochs=1, auto=False,
                        out=str(tmp_path / "run"), quiet=True)


def test_hostile_init_paths_are_one_line_errors(first_run, tmp_path):
    data, bundle = first_run
    text = tmp_path / "notes.msb"
    text.write_text("not a bundle")
    empty = tmp_path / "empty.msb"
    empty.write_bytes(b"")
    loop = tmp_path / "loop.msb"
    os.symlink(loop, loop)
    cases = [(tmp_path / "missing.msb", "no such model bundle"), (tmp_path, "is a folder"),
             (text, "not a readable model bundle"), (empty, "not a readable model bundle"),
             (loop, "no such model bundle")]
    for path, words in cases:
        result = CliRunner().invoke(cli_app, ["train", str(data), "--init", str(path), "--epochs", "1",
                                              "--out", str(tmp_path / "run"), "-q"])
        assert result.exit_code == 2, (path, result.output)
        assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output
    # The new run would write its model.msb over the bundle it starts from.
    same = tmp_path / "same"
    same.mkdir()
    shutil.copy(bundle, same / "model.msb")
    with pytest.raises(ConfigError, match="model.msb"):
        masksmith.train(data, init=str(same / "model.msb"), epochs=1, out=str(same), quiet=True)
    assert load_bundle(same / "model.msb")[1].keys() == load_bundle(bundle)[1].keys()
