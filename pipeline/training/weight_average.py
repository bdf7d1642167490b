"""An exponential moving average of the network's weights, the model that is validated, saved and predicts.

With few training cases the weights after any one step fit the last batches more than the data: the
validation pseudo-Dice swings from epoch to epoch while the training loss falls smoothly. Averaging the
weights over the last ~``1 / (1 - decay)`` steps smooths that out at the cost of one extra copy of the
weights (the update of torch's ``AveragedModel`` with an EMA, restricted to the weights that train).

Only the trainable weights are averaged (the frozen ones are equal in both copies), with one multi-tensor
operation per step, and only the buffers of modules in training mode are copied (a module in eval mode, such
as the frozen backbone, does not change its buffers): on a GPU a step from cached embeddings is bound by the
host's per-operation work, and a per-tensor update of every weight and buffer cost more operations than the
optimiser.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """The EMA of ``model``'s trainable parameters (the buffers of its modules in training mode are copied, not
    averaged), updated after each step.

    Args:
        model: the network being trained (an :class:`~autoprompt.modeling.autoprompt_sam.AutoPromptSAM`);
            its parameters must keep their identity (the optimiser updates them in place).
        decay: weight of the old average per step, in [0, 1).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        # the copy keeps the trained network's requires_grad flags: they name its trainable weights
        # (``trainable_state_dict``); no optimiser holds the copy's parameters
        self.model = copy.deepcopy(model)
        self.decay = decay
        self.updates = 0
        # the parameters themselves, not detached views: those would miss a later ``model.to(...)``
        pairs = [
            (averaged, trained)
            for averaged, trained in zip(self.model.parameters(), model.parameters(), strict=True)
            if trained.requires_grad
        ]
        self._averaged = [averaged for averaged, _ in pairs]
        self._trained = [trained for _, trained in pairs]
        # modules holding buffers, as (average, trained) pairs; their buffers are read at each update
        self._buffer_owners = [
            (averaged, trained)
            for averaged, trained in zip(self.model.modules(), model.modules(), strict=True)
            if trained._buffers
        ]

    @torch.no_grad()
    def update(self) -> None:
        """Blend the trained weights after an optimiser step into the average (the first call copies them)."""
        if self.updates == 0:
            torch._foreach_copy_(self._averaged, self._trained)
        else:
            torch._foreach_lerp_(self._averaged, self._trained, 1.0 - self.decay)
        buffers = [
            (averaged_buffer, trained_buffer)
            for averaged, trained in self._buffer_owners
            if trained.training
            for averaged_buffer, trained_buffer in zip(
                averaged._buffers.values(), trained._buffers.values(), strict=True
            )
            if trained_buffer is not None
        ]
        if buffers:
            torch._foreach_copy_(*map(list, zip(*buffers, strict=True)))
        self.updates += 1

    def restore(self, averaged_state: dict[str, torch.Tensor], updates: int) -> None:
        """Continue an average saved as ``model.trainable_state_dict()`` after ``updates`` steps."""
        self.model.load_trainable_state_dict(averaged_state)
        self.updates = updates
