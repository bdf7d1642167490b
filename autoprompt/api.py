"""The Python API: the same operations as the CLI, as plain functions taking explicit paths.

Each name is imported from the module that implements it only when first used, so
``import autoprompt`` stays light.

    from autoprompt import api
    api.plan_and_preprocess(...); api.train(...); api.predict(...); api.evaluate(...)
    api.segment(...); api.embed(...)
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> "module:attribute"
EXPORTS: dict[str, str] = {
    "plan_and_preprocess": "pipeline.experiment_planning:plan_and_preprocess",
    "train": "pipeline.training.run:train",
    "predict": "pipeline.inference.predict_folder:predict",
    "evaluate": "pipeline.evaluation:evaluate_folders",
    "benchmark": "autoprompt.benchmarking.runner:run_benchmark",
    "segment": "autoprompt.interactive.segment:segment",
    "segment_volume": "autoprompt.interactive.volume:segment_volume",
    "embed": "autoprompt.interactive.embedding:embed",
    "ModelOptions": "autoprompt.interactive.predictor:ModelOptions",
    "load_backbone": "autoprompt.modeling.backbone:load_backbone",
    "build_autoprompt_sam": "autoprompt.modeling.build:build_autoprompt_sam",
    "read_image": "pipeline.io:read_image",
    "write_image": "pipeline.io:write_image",
}

__all__ = sorted(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'autoprompt.api' has no attribute '{name}'")
    module_name, attribute = EXPORTS[name].split(":")
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value
