"""Training feedback: per-epoch history, ``training_log.txt`` and the ``progress.png`` curves."""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.files import atomic_path


class TrainingLog:
    """Appends lines to ``training_log.txt`` (and prints them without breaking tqdm bars).

    Args:
        path: the log file.
        enabled: False: write and print nothing (the processes of a DDP run but rank 0: one writer).
    """

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(f"{stamp}  {message}\n")
        tqdm.write(message)


def epoch_line(epoch: int, epochs: int, record: dict[str, Any], class_names: Sequence[str]) -> str:
    """The one-line summary of an epoch: losses, per-class pseudo-Dice, learning rate, time."""
    train = " ".join(
        f"{name} {value:.3f}" for name, value in record["train_terms"].items() if name != "total"
    )
    dice = " ".join(
        f"{name} {value:.3f}" for name, value in zip(class_names, record["val_dice"], strict=True)
    )
    return (
        f"epoch {epoch + 1}/{epochs}  train {record['train_loss']:.4f} ({train})  val {record['val_loss']:.4f}  "
        f"pseudo-Dice {dice} (mean {record['mean_dice']:.3f}, ema {record['ema_dice']:.3f})  "
        f"lr {record['lr']:.2e}  {record['seconds']:.1f} s"
    )


def plot_progress(history: list[dict[str, Any]], class_names: Sequence[str], path: Path) -> None:
    """Write ``progress.png``: losses (top) and pseudo-Dice per class, mean and EMA (bottom) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [record["epoch"] + 1 for record in history]
    figure, (loss_axis, dice_axis) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    loss_axis.plot(epochs, [r["train_loss"] for r in history], "b-", label="train loss")
    loss_axis.plot(epochs, [r["val_loss"] for r in history], "r-", label="validation loss")
    for name in history[0]["train_terms"]:
        if name != "total":
            loss_axis.plot(
                epochs, [r["train_terms"][name] for r in history], "--", linewidth=1, label=f"train {name}"
            )
    loss_axis.set_ylabel("loss")
    loss_axis.legend(loc="upper right", fontsize="small")
    loss_axis.grid(alpha=0.3)
    for index, name in enumerate(class_names):
        values = [r["val_dice"][index] for r in history]
        dice_axis.plot(
            epochs,
            [v if v is not None and not math.isnan(v) else float("nan") for v in values],
            ":",
            label=name,
        )
    dice_axis.plot(epochs, [r["mean_dice"] for r in history], "g-", label="mean pseudo-Dice")
    dice_axis.plot(epochs, [r["ema_dice"] for r in history], "g--", label="EMA (selects best)")
    dice_axis.set_xlabel("epoch")
    dice_axis.set_ylabel("pseudo-Dice (validation windows)")
    dice_axis.set_ylim(0, 1)
    dice_axis.legend(loc="lower right", fontsize="small")
    dice_axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
