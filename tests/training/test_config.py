"""Trainer presets: loading, overrides with type coercion, clear errors, YAML round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autoprompt.errors import AutoPromptError
from autoprompt.modeling.config import ModelConfig
from pipeline.trainer_config import (
    TrainerConfig,
    default_preset,
    load_trainer_config,
    preset_name,
    preset_names,
    save_trainer_config,
    trainer_config_from_dict,
)
from pipeline.training.trainer import planned_batch_size
from tests.planners.test_plans import make_plans


@pytest.mark.parametrize("preset", preset_names())
def test_every_bundled_preset_loads(preset: str) -> None:
    config = load_trainer_config(preset)
    assert isinstance(config, TrainerConfig)
    assert config.configuration in ("2d", "3d")


def test_defaults_per_configuration() -> None:
    assert load_trainer_config("2d_frozen").configuration == "2d"
    three_d = load_trainer_config("3d_adapter")
    assert three_d.configuration == "3d"
    assert three_d.model.encoder_adapters and three_d.model.depth_adapter == "encoder"
    cached = load_trainer_config("3d_frozen")  # encoder frozen: its embeddings can be cached
    assert cached.configuration == "3d" and cached.cache_embeddings is None
    assert not cached.model.encoder_adapters and cached.model.depth_adapter == "embedding"
    assert [default_preset(c, "cpu") for c in ("2d", "3d")] == ["2d_frozen", "3d_frozen"]
    assert [default_preset(c, "cuda") for c in ("2d", "3d")] == ["2d_frozen", "3d_adapter"]


def test_the_cpu_3d_preset_is_2d_frozen_but_for_the_configuration() -> None:
    """3d_frozen shares 2d_frozen's cache and views, and takes the choices made by CV on 2d; of its own it
    decodes only the centre slice of each stack."""
    two_d, three_d = (load_trainer_config(name).to_dict() for name in ("2d_frozen", "3d_frozen"))
    assert {key for key in two_d if two_d[key] != three_d[key]} == {"configuration", "model"}
    model_2d, model_3d = two_d["model"], three_d["model"]
    assert {key for key in model_2d if model_2d[key] != model_3d[key]} == {"decoded_slices"}
    assert model_3d["decoded_slices"] == "centre"


@pytest.mark.parametrize(
    ("decoded", "depth", "plan_batch", "expected"),
    [("all", 5, 2, 2), ("centre", 5, 2, 8), ("centre", 3, 2, 6), ("centre", 1, 8, 8), ("all", 1, 8, 8)],
)
def test_centre_slice_models_take_a_stack_per_planned_window(decoded, depth, plan_batch, expected) -> None:
    """With ``batch_size: null``: a model decoding centre slices spends the plan's ``batch x D`` decoded windows
    on as many stacks, at most the planner's largest batch (8)."""
    plan = dataclasses.replace(make_plans().configuration("3d"), stack_depth=depth, batch_size=plan_batch)
    assert planned_batch_size(plan, ModelConfig(decoded_slices=decoded)) == expected


@pytest.mark.parametrize(
    ("override", "attribute", "expected"),
    [
        ("epochs=7", ("epochs",), 7),
        ("learning_rate=1e-4", ("learning_rate",), 1e-4),
        ("time_budget_minutes=5", ("time_budget_minutes",), 5.0),  # int -> float
        ("batch_size=null", ("batch_size",), None),
        ("model.adapter_dim=16", ("model", "adapter_dim"), 16),
        ("model.depth_kernel=[3, 1, 1]", ("model", "depth_kernel"), (3, 1, 1)),  # list -> tuple
        ("augmentation.mirror=false", ("augmentation", "mirror"), False),
        ("augmentation.scale_range=[1, 1]", ("augmentation", "scale_range"), (1.0, 1.0)),
        ("model.checkpoint=/tmp/sam.pth", ("model", "checkpoint"), "/tmp/sam.pth"),
    ],
)
def test_overrides_are_coerced(override: str, attribute: tuple[str, ...], expected: object) -> None:
    value = load_trainer_config("2d_frozen", [override])
    for name in attribute:
        value = getattr(value, name)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epoch=3", "did you mean 'epochs'"),
        ("model.adaptr_dim=3", "did you mean 'model.adapter_dim'"),
        ("epochs=many", "'epochs' = 'many' is not a valid int"),
        ("augmentation.mirror=maybe", "'augmentation.mirror'"),
        ("model.prompt_generator=encoder_hed", "did you mean 'encoder_head'"),
        ("learning_rate=-1", "invalid value for learning_rate"),
        ("epochs", "is not KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(AutoPromptError) as error:
        load_trainer_config("2d_frozen", [override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_int8_cache_is_on_by_default_and_int8_encoder_false_alone_is_a_valid_config() -> None:
    config = load_trainer_config("2d_frozen", [])
    assert config.int8_cache is True and config.int8_encoder is True  # docs/results.md, round 43
    assert load_trainer_config("2d_frozen", ["int8_cache=false"]).int8_cache is False
    assert load_trainer_config("2d_frozen", ["int8_encoder=false"]).int8_encoder is False


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(AutoPromptError) as error:
        load_trainer_config("2d_frozn")
    assert "did you mean '2d_frozen'" in str(error.value)
    assert "3d_adapter" in str(error.value)


def test_yaml_round_trip_and_preset_name(tmp_path: Path) -> None:
    config = load_trainer_config("2d_frozen", ["model.adapter_dim=8", "epochs=3", "time_budget_minutes=2.5"])
    path = tmp_path / "mine.yaml"
    save_trainer_config(config, path)
    assert load_trainer_config(path) == config
    assert preset_name(path) == "mine"
    assert preset_name("2d_frozen") == "2d_frozen"


def test_model_folders_of_round_14_load_with_their_zoom_setting_renamed() -> None:
    old = load_trainer_config("2d_frozen").to_dict()
    old["zoom"] = {"enabled": True, "margin": 0.3, "max_factor": 4.0, "views": 0.5}
    config = trainer_config_from_dict(old, source="trainer_config.yaml")
    assert config.zoom.second_pass and config.zoom.margin == 0.3


def test_malformed_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("epochs: [1, 2\n")
    with pytest.raises(AutoPromptError, match="broken.yaml: not valid YAML"):
        load_trainer_config(path)
