"""Training config: official defaults, YAML/JSON files, strict keys and value checks."""
import json
from pathlib import Path

import pytest

from addsr_core.training.config import (
    AddSRTrainConfig,
    TrainConfigError,
    config_from_dict,
    load_config,
    parse_override,
)

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def test_defaults_are_the_official_recipe():
    c = AddSRTrainConfig().validate()
    assert (c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.max_grad_norm) == (2e-5, 1e-2, 1.0)
    assert (c.optimizer.betas, c.optimizer.eps, c.optimizer.lr_scheduler) == ((0.9, 0.999), 1e-8, "constant")
    assert (c.disc_optimizer.lr, c.disc_optimizer.weight_decay, c.disc_optimizer.max_grad_norm) == (2e-5, 1e-2, None)
    assert (c.train.batch_size, c.train.gradient_accumulation_steps, c.train.mixed_precision) == (2, 2, "fp16")
    assert (c.train.max_train_steps, c.train.checkpointing_steps, c.train.ema_decay) == (50000, 5000, 0.99)
    assert c.train.unet_trainable_suffixes == ("image_attentions",)
    assert c.train.controlnet_trainable_prefixes == ("controlnet_cond_embedding",)
    assert (c.loss.adv_weight, c.loss.ta_base, c.loss.ta_growth, c.loss.r1_weight) == (0.02, 0.5, 2.1, 0.0)
    assert (c.loss.student_timesteps, c.loss.teacher_samples, c.loss.two_step_prob) == ((999, 749, 499, 249), 4, 0.5)
    assert (c.discriminator.hooks, c.discriminator.c_dim, c.discriminator.p_crop) == ((2, 5, 8, 11), 384, 0.5)
    assert c.discriminator.diffaug_policy == "translation,cutout" and c.discriminator.cond_image_size == 518
    assert (c.data.resolution, c.data.null_text_ratio, c.data.degradation.scale) == (512, 0.5, 4)
    d = c.data.degradation  # SeeSR make_paired_data.py
    assert d.resize_range == (0.15, 1.5) and d.noise_range == (1.0, 30.0) and d.jpeg_range2 == (30.0, 95.0)
    assert d.second_blur_prob == 0.8 and d.final_sinc_prob == 0.8 and d.usm_sharpen_gt is True


def test_yaml_and_json_files_equal_the_defaults(tmp_path):
    pytest.importorskip("yaml")
    from_yaml = load_config(CONFIGS / "addsr_official.yaml")
    assert from_yaml == AddSRTrainConfig()
    path = tmp_path / "c.json"
    path.write_text(json.dumps(from_yaml.to_dict()))
    assert load_config(path) == from_yaml


def test_overrides_presets_and_dotted_overrides():
    c = load_config(overrides={"train": {"batch_size": 4}, "data": {"degradation": {"preset": "realesrgan_yml"}}})
    assert c.train.batch_size == 4
    assert c.data.degradation.jpeg_range2 == (60.0, 100.0) and c.data.degradation.usm_sharpen_gt is False
    assert parse_override("loss.adv_weight=0.05") == {"loss": {"adv_weight": 0.05}}
    assert parse_override("data.hr_folders=[\"/a\", \"/b\"]") == {"data": {"hr_folders": ["/a", "/b"]}}
    assert parse_override("train.output_dir=runs/x") == {"train": {"output_dir": "runs/x"}}
    assert load_config(overrides=parse_override("data.hr_folders=[\"/a\"]")).data.hr_folders == ("/a",)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"trian": {}}, r"Unknown key\(s\) \['trian'\]"),
        ({"train": {"batchsize": 3}}, r"Unknown key\(s\) \['batchsize'\] in train"),
        ({"train": {"batch_size": "2"}}, "train.batch_size must be an integer"),
        ({"train": {"mixed_precision": "fp8"}}, "mixed_precision"),
        ({"data": {"source": "web"}}, "data.source"),
        ({"data": {"resolution": 500}}, "multiple of 8"),
        ({"data": {"resolution": 64}}, "too small"),
        ({"data": {"degradation": {"preset": "nope"}}}, "Unknown degradation preset"),
        ({"data": {"degradation": {"kernel_list": ["iso", "box"]}}}, "unknown kernel types"),
        ({"data": {"degradation": {"jpeg_range": [0, 90]}}}, "jpeg_range"),
        ({"optimizer": {"lr_scheduler": "cosine"}}, "not supported"),
        ({"loss": {"two_step_prob": 2.0}}, "two_step_prob"),
        ({"data": []}, "data must be a mapping"),
    ],
)
def test_bad_values_raise_errors_that_name_the_field(data, message):
    with pytest.raises(TrainConfigError, match=message):
        config_from_dict(data)


def test_missing_or_wrongly_named_file(tmp_path):
    with pytest.raises(TrainConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "c.toml").write_text("")
    with pytest.raises(TrainConfigError, match=r"\.yaml, \.yml or \.json"):
        load_config(tmp_path / "c.toml")
