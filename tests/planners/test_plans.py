"""Plans: JSON round-trip and the checks that guard a hand-edited plans.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from autoprompt.errors import AutoPromptError
from planners.plans import ChannelNormalization, ConfigurationPlan, Plans


def make_plans() -> Plans:
    def configuration(stack_depth: int, batch_size: int) -> ConfigurationPlan:
        return ConfigurationPlan(
            data_identifier="autoprompt_slices",
            slice_axis=0,
            target_spacing=[10.0, 1.5625, 1.5625],
            window_size=[256, 256],
            stack_depth=stack_depth,
            batch_size=batch_size,
            median_shape=[9, 256, 216],
            cache_embeddings=True,
            estimated_cache_gib=3.5,
            inplane_rule="median",
        )

    return Plans(
        schema_version=1,
        dataset_name="Dataset027_ACDC",
        labels={"background": 0, "RV": 1, "MYO": 2, "LV": 3},
        channel_names={"0": "cineMRI"},
        file_ending=".nii.gz",
        normalization=[ChannelNormalization("mr", 0.5, 99.5)],
        configurations={"2d": configuration(1, 8), "3d": configuration(5, 2)},
    )


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    plans = make_plans()
    plans.save(tmp_path / "plans.json")
    loaded = Plans.load(tmp_path / "plans.json")
    assert loaded == plans
    assert isinstance(loaded.normalization[0], ChannelNormalization)
    assert isinstance(loaded.configuration("3d"), ConfigurationPlan)
    assert json.loads((tmp_path / "plans.json").read_text())["configurations"]["3d"]["stack_depth"] == 5


def test_num_foreground_classes_and_unknown_configuration() -> None:
    plans = make_plans()
    assert plans.num_foreground_classes == 3
    with pytest.raises(AutoPromptError, match=r"'4d'.*choose one of: 2d, 3d"):
        plans.configuration("4d")


def test_a_hand_edit_is_read_back(tmp_path: Path) -> None:
    data = make_plans().to_dict()
    data["configurations"]["2d"]["batch_size"] = 3
    data["configurations"]["2d"]["target_spacing"] = [10, 2, 2]  # integers are fine for floats
    data["configurations"]["3d"]["target_spacing"] = [10, 2, 2]
    (tmp_path / "plans.json").write_text(json.dumps(data))
    plans = Plans.load(tmp_path / "plans.json")
    assert plans.configuration("2d").batch_size == 3
    assert plans.configuration("2d").target_spacing == [10.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["configurations"]["2d"].update(batchsize=4),
            r"unknown key 'configurations\.2d\.batchsize'.*batch_size",
        ),
        (
            lambda d: d["configurations"]["3d"].pop("stack_depth"),
            r"missing key 'configurations\.3d\.stack_depth'",
        ),
        (lambda d: d.update(extra=1), r"unknown key 'extra'"),
        (
            lambda d: d["configurations"]["2d"].update(batch_size="8"),
            r"'configurations\.2d\.batch_size' must be an integer",
        ),
        (lambda d: d["configurations"]["2d"].update(batch_size=0), r"'configurations\.2d\.batch_size' is 0"),
        (
            lambda d: d["configurations"]["3d"].update(stack_depth=4),
            r"'configurations\.3d\.stack_depth' is 4; use an odd",
        ),
        (lambda d: d["configurations"]["2d"].update(slice_axis=3), r"slice_axis' is 3"),
        (
            lambda d: d["configurations"]["2d"].update(target_spacing=[1.0, 0.0, 1.0]),
            r"target_spacing' needs 3 positive",
        ),
        (lambda d: d["normalization"][0].update(scheme="pet"), r"normalization\[0\]\.scheme' is 'pet'"),
        (lambda d: d["normalization"][0].update(lower=99.5, upper=0.5), r"lower 99.5 >= upper 0.5"),
        (lambda d: d["normalization"][0].update(upper=150.0), r"percentiles; keep them within 0\.\.100"),
        (lambda d: d.update(normalization=[]), r"'normalization' has 0 entries for 1 channels"),
        (lambda d: d.update(schema_version=2), r"'schema_version' is 2"),
        (lambda d: d["configurations"]["3d"].update(target_spacing=[10.0, 1.0, 1.0]), r"shared with '2d'"),
        (lambda d: d["configurations"].update({"2d": [1, 2]}), r"'configurations\.2d' must be an object"),
    ],
)
def test_a_bad_edit_names_plans_json_and_the_key(tmp_path: Path, edit, message: str) -> None:
    data = copy.deepcopy(make_plans().to_dict())
    edit(data)
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AutoPromptError, match=message) as error:
        Plans.load(path)
    assert str(error.value).startswith(str(path))
    assert "\n" not in str(error.value)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(AutoPromptError, match="plan-and-preprocess"):
        Plans.load(tmp_path / "plans.json")
    (tmp_path / "plans.json").write_text('{"schema_version": 1,')
    with pytest.raises(AutoPromptError, match="not valid JSON"):
        Plans.load(tmp_path / "plans.json")
