from __future__ import annotations

import pytest

from autoprompt.modeling.config import ModelConfig


def test_defaults_are_the_documented_frozen_encoder_setup():
    config = ModelConfig()
    assert config.backbone == "litemedsam"
    assert config.prompt_generator == "encoder_head"
    assert (config.encoder_adapters, config.decoder_adapters) == (False, True)
    assert config.depth_adapter == "embedding"
    assert config.skip_presence_below == 0.0  # every class decoded: trained models predict as before
    assert config.refinement_tolerance == 0.0  # every pair decoded again: trained models predict as before
    assert config.inference_region_tokens == 0  # whole windows decoded: trained models predict as before


def test_dict_round_trip_gives_plain_values():
    config = ModelConfig(prompt_generator="coarse_unet", depth_kernel=[3, 1, 1], unet_features=[8, 16])
    data = config.to_dict()
    assert data["depth_kernel"] == [3, 1, 1] and isinstance(data["unet_features"], list)
    assert ModelConfig.from_dict(data) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt_generator": "encoder-head"}, "did you mean 'encoder_head'"),
        ({"depth_adapter": "embeding"}, "did you mean 'embedding'"),
        ({"box_source": "mask"}, "choose one of head, coarse_mask"),
        ({"depth_kernel": (2, 3, 3)}, "three odd sizes"),
        ({"adapter_dim": 0}, "positive bottleneck width"),
        ({"unet_features": (8,)}, "at least two"),
        (
            {"skip_presence_below": 1.0},
            r"skip_presence_below = 1.0 must be in \[0, 1\) \(0: decode every class\)",
        ),
        ({"skip_presence_below": float("nan")}, r"skip_presence_below = nan must be in \[0, 1\)"),
        ({"inference_region_tokens": -1}, r"inference_region_tokens = -1 must be 0 \(whole windows\)"),
        (
            {"refinement_tolerance": 1.0},
            r"refinement_tolerance = 1.0 must be in \[0, 1\) \(0: decode every pair",
        ),
        ({"refinement_tolerance": -0.01}, r"refinement_tolerance = -0.01 must be in \[0, 1\)"),
    ],
)
def test_invalid_values_name_the_setting_and_the_fix(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ValueError, match="did you mean 'adapter_dim'"):
        ModelConfig.from_dict({"adaptor_dim": 16})
