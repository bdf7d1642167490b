"""Keep-largest-component postprocessing: applying rules, nnU-Net's decision rule, fold agreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoprompt.errors import AutoPromptError
from pipeline.inference.postprocessing import (
    apply_postprocessing,
    combine_fold_rules,
    determine_postprocessing,
    load_postprocessing,
    mean_dice,
    postprocessing_from_labels,
)
from pipeline.io import Geometry, write_image


def two_organs(shape: tuple[int, int, int] = (6, 20, 20)) -> np.ndarray:
    """Reference: label 1 a cube on the left, label 2 a cube on the right."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:5, 4:10, 2:8] = 1
    labels[1:5, 4:10, 12:18] = 2
    return labels


def test_apply_keeps_the_largest_component_of_each_step() -> None:
    labels = two_organs()
    noisy = labels.copy()
    noisy[0, 0, 0] = 1  # a stray voxel of class 1
    noisy[5, 19, 19] = 2  # and one of class 2
    cleaned = apply_postprocessing(noisy, {"steps": [[1]]})
    assert cleaned[0, 0, 0] == 0 and cleaned[5, 19, 19] == 2
    np.testing.assert_array_equal(apply_postprocessing(noisy, {"steps": [[1], [2]]}), labels)
    assert apply_postprocessing(noisy, None) is noisy


def test_stray_blobs_make_the_rule_choose_keep_largest() -> None:
    references = [two_organs(), two_organs()]
    predictions = [r.copy() for r in references]
    predictions[0][0, 0:2, 0:2] = 1  # false positives of class 1 far from the organ
    predictions[1][5, 18:20, 0:2] = 1
    rules = determine_postprocessing(predictions, references, labels=[1, 2])
    assert rules["steps"] == [
        [1, 2]
    ]  # all foreground as one region already removes them; per class adds nothing
    assert rules["foreground_dice_after"] == pytest.approx(1.0)
    assert rules["foreground_dice_before"] < 1.0
    for prediction, reference in zip(predictions, references, strict=True):
        np.testing.assert_array_equal(apply_postprocessing(prediction, rules), reference)


def test_a_second_real_component_keeps_the_rule_off() -> None:
    """If the reference itself has two components, removing the smaller one lowers Dice: no step."""
    reference = two_organs()
    reference[0, 15:18, 0:3] = 1  # a genuine second part of class 1
    rules = determine_postprocessing([reference.copy()], [reference], labels=[1, 2])
    assert rules["steps"] == []
    assert rules["mean_dice_before"] == rules["mean_dice_after"] == {"1": 1.0, "2": 1.0}


def test_mean_dice_leaves_out_cases_without_the_label() -> None:
    reference = two_organs()
    empty = np.zeros_like(reference)
    dice = mean_dice([reference, empty], [reference, empty], [1, 2, 3])
    assert dice[1] == 1.0 and dice[2] == 1.0 and np.isnan(dice[3])


def test_folders_of_files_work_like_arrays(tmp_path: Path) -> None:
    geometry = Geometry(
        spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()), size=(20, 20, 6)
    )
    reference = two_organs()
    prediction = reference.copy()
    prediction[0, 0:2, 0:2] = 2
    for folder, array in (("pred", prediction), ("ref", reference)):
        write_image(array, geometry, tmp_path / folder / "case_000.nii.gz")
    write_image(reference, geometry, tmp_path / "ref" / "case_001.nii.gz")  # extra references are fine
    from_files = determine_postprocessing(tmp_path / "pred", tmp_path / "ref", labels=[1, 2])
    assert from_files == determine_postprocessing([prediction], [reference], labels=[1, 2])
    assert from_files["steps"]
    (tmp_path / "pred" / "case_002.nii.gz").write_bytes((tmp_path / "pred" / "case_000.nii.gz").read_bytes())
    with pytest.raises(AutoPromptError, match="case_002.nii.gz: missing reference"):
        determine_postprocessing(tmp_path / "pred", tmp_path / "ref", labels=[1, 2])


def test_fold_ensembles_apply_only_steps_all_folds_chose() -> None:
    rules = [{"steps": [[1, 2], [2]]}, {"steps": [[2], [1]]}]
    assert combine_fold_rules(rules) == {"steps": [[2]]}
    assert combine_fold_rules([{"steps": [[1]]}, None]) == {"steps": []}


def test_rules_file_round_trip_and_bad_file(tmp_path: Path) -> None:
    assert load_postprocessing(tmp_path / "postprocessing.json") is None
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"steps": [[1, 2]]}))
    assert load_postprocessing(good)["steps"] == [[1, 2]]
    bad = tmp_path / "postprocessing.json"
    bad.write_text('{"steps": "largest"}')
    with pytest.raises(AutoPromptError, match=r"postprocessing\.json: not valid postprocessing rules"):
        load_postprocessing(bad)


def heart(shape: tuple[int, int, int] = (6, 20, 20)) -> np.ndarray:
    """Reference: three classes touching each other, the foreground one piece (as ACDC's RV, MYO, LV)."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:5, 4:16, 2:8] = 1
    labels[1:5, 4:16, 8:11] = 2
    labels[1:5, 4:16, 11:16] = 3
    return labels


def test_without_validation_cases_a_one_piece_foreground_is_kept_as_one_region(tmp_path: Path) -> None:
    split_class = heart()
    split_class[1:5, 9:11, 2:8] = 0  # class 1 in two pieces, both touching class 2: the foreground stays one
    rules = postprocessing_from_labels([heart(), split_class], labels=[1, 2, 3])
    assert rules["steps"] == [[1, 2, 3]] and rules["largest_component_share"]["foreground"] == 1.0
    assert rules["largest_component_share"]["1"] < 0.95
    # a prediction whose largest class-1 piece is a wrong one: the region step keeps the piece at the heart
    prediction = heart()
    prediction[1:5, 4:16, 2:8] = 0
    prediction[1:5, 4:7, 5:8] = 1  # the true class-1 piece, small, touching class 2
    prediction[0, 0:20, 17:20] = 1  # a larger class-1 blob away from the heart
    kept = apply_postprocessing(prediction, rules)
    assert (kept[1:5, 4:7, 5:8] == 1).all() and (kept[0, :, 17:] == 0).all()
    assert not (
        apply_postprocessing(prediction, {"steps": [[1]]})[1:5, 4:7, 5:8] == 1
    ).any()  # per class: erased
    (tmp_path / "postprocessing.json").write_text(json.dumps(rules))
    assert load_postprocessing(tmp_path / "postprocessing.json")["steps"] == [[1, 2, 3]]  # valid as written


def test_without_validation_cases_separate_organs_keep_one_component_per_one_piece_class() -> None:
    one_piece = two_organs()
    split = two_organs()
    split[1:5, 14:18, 2:8] = 1  # class 1 in two pieces of similar size in the second label map
    speck = two_organs()
    speck[5, 19, 0] = 2  # class 2 with a one-voxel fragment: still one piece for 95 %
    rules = postprocessing_from_labels([one_piece, split, speck], labels=[1, 2, 3])
    assert rules["steps"] == [
        [2]
    ]  # the organs are apart; class 1 is not always one piece; class 3 never occurs
    assert rules["largest_component_share"]["1"] == pytest.approx(0.6)
    assert rules["largest_component_share"]["3"] is None and rules["num_cases"] == 3
    assert postprocessing_from_labels([one_piece, split], labels=[1, 2], min_share=0.5)["steps"] == [[1], [2]]
