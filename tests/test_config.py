"""Config: defaults -> YAML -> dotted overrides, type checks and actionable errors."""

from __future__ import annotations

import warnings

import pytest

from deeplab.config import (
    Config,
    ConfigError,
    from_dict,
    list_recipes,
    load_config,
    recipe_path,
    to_dict,
    validate,
)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  lr: 0.01\ndata:\n  crop_size: [321, 321]\n")
    cfg = load_config(path, ["optim.lr=0.02", "data.root=/x", "loss.class_weights=[1, 2]"])
    assert cfg.optim.lr == 0.02  # override beats YAML
    assert cfg.data.crop_size == [321, 321]  # YAML beats default
    assert cfg.optim.momentum == 0.9  # default kept
    assert cfg.data.root == "/x"
    assert cfg.loss.class_weights == [1.0, 2.0]
    assert isinstance(cfg.optim.lr, float)


def test_int_accepted_for_float_and_single_crop_size():
    cfg = load_config(None, ["optim.lr=1", "data.crop_size=257"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.crop_size == [257, 257]


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr'.*optim\.lr, optim\.momentum"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(None, ["modle.name=x"])


def test_wrong_types_and_values_are_explained():
    with pytest.raises(ConfigError, match="train.iters='many' should be int"):
        load_config(None, ["train.iters=many"])
    with pytest.raises(ConfigError, match="output stride must be 8, 16 or 32"):
        load_config(None, ["model.output_stride=12"])
    with pytest.raises(ConfigError, match="choose one of: auto, finetune"):
        load_config(None, ["model.bn=sometimes"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe"):
        load_config("nope.yaml")


def test_batch_must_split_over_accumulation_and_processes():
    cfg = load_config(None, ["train.batch_size=16", "train.accum_steps=2"])
    validate(cfg, world_size=2)
    with pytest.raises(ConfigError, match="not divisible.*try train.batch_size=12"):
        validate(load_config(None, ["train.batch_size=14", "train.accum_steps=3"]))


def test_crop_not_k_times_os_plus_one_warns_with_suggestion():
    with pytest.warns(UserWarning, match="crop 500 is not k\\*16\\+1; try 513"):
        load_config(None, ["data.crop_size=500"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, ["data.crop_size=513"])


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.options={width_mult: 0.5}", "optim.lr=0.1"])
    again = from_dict(to_dict(cfg))
    assert again == cfg
    assert again.model.options == {"width_mult": 0.5}
    assert Config() != cfg


@pytest.mark.parametrize("name", sorted(list_recipes()))
def test_recipes_load(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recipes use k*OS+1 crops
        cfg = load_config(name, ["data.root=/data"])
    assert cfg.train.iters > 0
    assert load_config(recipe_path(name), ["data.root=/data"]) == cfg  # by path: the same


def test_recipes_are_listed_with_a_line_each_and_written_out_to_edit(tmp_path, capsys):
    from deeplab.cli import main

    recipes = list_recipes()
    assert {"own_data", "camvid_v3plus_mobilenetv2", "voc_v3plus_xception65"} <= set(recipes)
    assert all(10 < len(line) <= 110 and "\n" not in line for line in recipes.values())
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in recipes)
    assert main(["recipes", "own_data", "--out", str(tmp_path)]) == 0
    written = tmp_path / "own_data.yaml"
    assert written.read_text() == recipe_path("own_data").read_text()
    assert load_config(written) == load_config("own_data")
    assert main(["recipes", "own_data", "--out", str(tmp_path)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_an_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="own_data"):
        load_config("configs/own_data.yaml")


def test_recipes_hold_paper_settings():
    voc = load_config("voc_v3plus_xception65")
    assert (voc.data.crop_size, voc.optim.lr, voc.train.batch_size) == ([513, 513], 0.007, 16)
    assert (voc.optim.weight_decay, voc.train.iters, voc.model.output_stride) == (4e-5, 30000, 16)
    assert load_config("voc_v3_resnet101").optim.weight_decay == 1e-4
    city = load_config("cityscapes_v3plus_xception65")
    assert (city.data.crop_size, city.optim.lr, city.train.batch_size) == ([769, 769], 0.01, 8)
    assert voc.data.root is None  # no dataset path is assumed


def test_exponent_without_a_dot_is_a_float():
    # YAML 1.1 reads "1e-6" as a string; a float setting takes it as the number.
    assert load_config(None, ["optim.lr=1e-6"]).optim.lr == 1e-6
    with pytest.raises(ConfigError, match="should be float"):
        load_config(None, ["optim.lr=fast"])
