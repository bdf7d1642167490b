"""An exponential moving average of the network's weights, the model that is validated, saved and predicts.

With few training cases the weights after any one step fit the last batches more than the data: the
validation pseudo-Dice swings from epoch to epoch while the training loss falls smoothly. Averaging the
weights over the last ~``1 / (1 - decay)`` steps (torch's :class:`~torch.optim.swa_utils.AveragedModel`
with an EMA update) smooths that out at the cost of one extra copy of the weights.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The EMA of ``model``'s parameters (buffers are copied, not averaged), updated after each step.

    Args:
        model: the network being trained (an :class:`~autoprompt.modeling.autoprompt_sam.AutoPromptSAM`).
        decay: weight of the old average per step, in [0, 1).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        # the copy keeps the trained network's requires_grad flags: they name its trainable weights
        # (``trainable_state_dict``); no optimiser holds the copy's parameters
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    @property
    def model(self) -> torch.nn.Module:
        """The averaged network (same class and methods as the trained one)."""
        return self.averaged.module

    def update(self, model: torch.nn.Module) -> None:
        """Blend the weights after an optimiser step into the average (the first call copies them)."""
        self.averaged.update_parameters(model)

    @property
    def updates(self) -> int:
        """Steps averaged so far (0: the next update copies the weights)."""
        return int(self.averaged.n_averaged)

    def restore(self, averaged_state: dict[str, torch.Tensor], updates: int) -> None:
        """Continue an average saved as ``model.trainable_state_dict()`` after ``updates`` steps."""
        self.model.load_trainable_state_dict(averaged_state)
        self.averaged.n_averaged.fill_(updates)
