"""nnU-Net v2 as the baseline: the real ``nnunetv2`` package, its own planning, trainer and predictor.

nnunetv2 reads ``nnUNet_raw/_preprocessed/_results`` from the environment when it is imported, so every
nnU-Net step runs in a child process whose environment names this benchmark's folders; nothing here
changes the caller's environment.

Training stops on a wall-clock budget: :func:`_time_budget_trainer` subclasses ``nnUNetTrainer``, times
its first epoch and then sets the number of epochs (and the poly learning-rate schedule) so the run
fits the budget, never more than nnU-Net's own 1000 epochs. Unless the caller fixes the iterations per
epoch, a few timed steps at the start size them (:func:`iterations_for_budget`) so that at least
:data:`MIN_EPOCHS_IN_BUDGET` epochs fit: on a CPU one standard epoch (250 iterations) can outlast the
whole budget (ACDC 2d on 2 cores: docs/results.md, "ACDC, 70/10 patient split"), which would leave nnU-Net
one epoch and an unused budget. On a GPU the 250 fit and nothing changes. The subclass carries the name
``nnUNetTrainer`` (the network, loss and inference are nnUNetTrainer's), so its model folder and
checkpoints are the ones ``nnUNetv2_predict_from_modelfolder`` expects.

Every step returns a :class:`StepUsage`: its wall time and the peak resident memory of the child
process (or of the largest of its own children, e.g. nnU-Net's data-augmentation workers).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from autoprompt.allocator import retained_memory_environment
from autoprompt.errors import AutoPromptError
from pipeline.files import load_json, save_json
from pipeline.training.optim import epochs_in_budget, recent_epoch_seconds

TRAINER_NAME = "nnUNetTrainer"
NNUNET_ITERATIONS_PER_EPOCH = 250
"""nnU-Net's training iterations per epoch (its validation runs a fifth as many)."""
MIN_EPOCHS_IN_BUDGET = 10
"""Fewest epochs a time-budgeted nnU-Net run is sized for (enough for its poly schedule to decay)."""
PROBE_STEPS = 3
"""Training steps timed, after an untimed first one, to size the iterations per epoch."""
_VALIDATION_OVERHEAD = 1.1
"""Epoch time over training-step time: a fifth as many validation steps, each a forward pass (~1/3 of a step)."""


def iterations_for_budget(
    budget_seconds: float, seconds_per_step: float, *, min_epochs: int = MIN_EPOCHS_IN_BUDGET
) -> int:
    """Training iterations per epoch so that ``min_epochs`` epochs fit ``budget_seconds``.

    At most nnU-Net's 250 and at least 1: ``iterations_for_budget(3600, 16.8) == 19`` (a slow CPU
    step), ``iterations_for_budget(3600, 0.2) == 250`` (a fast GPU step).
    """
    if budget_seconds <= 0 or seconds_per_step <= 0:
        raise ValueError(f"budget and step time must be positive, got {budget_seconds}, {seconds_per_step}")
    fitted = int(budget_seconds / (min_epochs * seconds_per_step * _VALIDATION_OVERHEAD))
    return max(1, min(NNUNET_ITERATIONS_PER_EPOCH, fitted))


@dataclass(frozen=True)
class StepUsage:
    """What one child-process step cost.

    Attributes:
        seconds: wall time from start to exit.
        peak_rss_mib: peak resident memory (MiB) of the child or of the largest process it waited for
            (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a small launcher process).
    """

    seconds: float
    peak_rss_mib: float


@dataclass(frozen=True)
class NnUNetRoots:
    """The three folders nnU-Net works in."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def under(cls, folder: Path) -> NnUNetRoots:
        """``folder/nnUNet_raw``, ``folder/nnUNet_preprocessed``, ``folder/nnUNet_results``."""
        return cls(folder / "nnUNet_raw", folder / "nnUNet_preprocessed", folder / "nnUNet_results")

    def environment(self) -> dict[str, str]:
        """A copy of this process's environment with nnU-Net's folders set and compilation off.

        glibc's malloc thresholds are raised as for autoprompt's commands
        (``autoprompt.allocator.retained_memory_environment``), so both run under the same allocator.

        ``nnUNet_n_proc_DA`` (data-augmentation workers) keeps nnU-Net's own default (its host table,
        at most the CPU count) unless the caller's environment sets it.
        """
        env = retained_memory_environment(os.environ)
        env.update(
            nnUNet_raw=str(self.raw),
            nnUNet_preprocessed=str(self.preprocessed),
            nnUNet_results=str(self.results),
            nnUNet_compile="f",
        )
        return env


def link_raw_subset(source: Path, case_ids: list[str], raw_root: Path, dataset_name: str) -> Path:
    """Make ``raw_root/dataset_name`` hold only ``case_ids`` of the raw dataset ``source`` (symbolic links).

    Returns:
        The new raw dataset folder (dataset.json rewritten with the subset's ``numTraining``).
    """
    target = raw_root / dataset_name
    dataset_json = load_json(source / "dataset.json")
    link_cases(source, case_ids, target / "imagesTr", target / "labelsTr")
    save_json({**dataset_json, "numTraining": len(case_ids)}, target / "dataset.json")
    return target


def link_cases(source: Path, case_ids: list[str], images: Path, labels: Path) -> None:
    """Symbolic links to the ``imagesTr`` channels and ``labelsTr`` label of ``case_ids`` of the raw dataset ``source``.

    Raises:
        AutoPromptError: a case file is missing.
    """
    dataset_json = load_json(source / "dataset.json")
    ending = dataset_json["file_ending"]
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for case in case_ids:
        for channel in range(len(dataset_json["channel_names"])):
            name = f"{case}_{channel:04d}{ending}"
            _link(source / "imagesTr" / name, images / name)
        _link(source / "labelsTr" / f"{case}{ending}", labels / f"{case}{ending}")


def _link(source: Path, link: Path) -> None:
    if not source.is_file():
        raise AutoPromptError(f"{source}: case file missing; check the dataset and the case list")
    if not link.exists():
        link.symlink_to(source.resolve())


_MEASURE_CHILDREN = """\
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""
"""Launcher measuring its children: a child's ``ru_maxrss`` starts at the RSS of the process it was forked
from, so a small launcher, not this (large) process, must fork the measured command."""


HEARTBEAT_S = 60.0
"""While a child step runs, :func:`run_logged` reports this often how long it has run and its log's last line."""


def run_logged(
    command: list[str], *, env: dict[str, str], log_file: Path, what: str, heartbeat_s: float = HEARTBEAT_S
) -> StepUsage:
    """Run ``command`` as a child process, its output appended to ``log_file``; measure time and peak memory.

    Every ``heartbeat_s`` seconds while it runs, one line on stderr (through ``tqdm.write``, so progress bars
    stay intact) gives the step, the time so far and the last line of its log: a 30-minute training is not silent.

    Args:
        command: the program and its arguments.
        env: the child's environment.
        log_file: stdout and stderr of the child go here.
        what: names the step in the error message and the heartbeat (e.g. "nnU-Net training").
        heartbeat_s: seconds between two heartbeat lines.

    Raises:
        AutoPromptError: the child failed; the message quotes the last line of its output.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    rss_file = log_file.with_name(f".{log_file.name}.maxrss")
    start = time.monotonic()
    with log_file.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        launcher = [sys.executable, "-c", _MEASURE_CHILDREN, str(rss_file), *command]
        with subprocess.Popen(launcher, env=env, stdout=log, stderr=subprocess.STDOUT) as child:
            try:
                returncode = _wait_reporting(
                    child, start=start, log_file=log_file, what=what, every=heartbeat_s
                )
            except BaseException:
                child.kill()  # as subprocess.run does: an interrupted step leaves no orphan
                raise
    seconds = time.monotonic() - start
    if returncode != 0:
        raise AutoPromptError(f"{what} failed (exit {returncode}): {_last_line(log_file)}; see {log_file}")
    maxrss = float(rss_file.read_text())
    rss_file.unlink()
    kib = maxrss / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux
    return StepUsage(seconds=seconds, peak_rss_mib=kib / 1024)


def _wait_reporting(child: subprocess.Popen, *, start: float, log_file: Path, what: str, every: float) -> int:
    """``child``'s exit status, once it ends; until then a heartbeat line every ``every`` seconds."""
    while True:
        try:
            return child.wait(timeout=every)
        except subprocess.TimeoutExpired:
            so_far = tqdm.format_interval(time.monotonic() - start)
            tqdm.write(
                f"{what}: running for {so_far}; {log_file}: {_last_line(log_file)[:160]}", file=sys.stderr
            )


def _last_line(log_file: Path) -> str:
    """The last non-empty line of a log (the last ``\\r`` segment of it, for progress bars)."""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in log_file.read_text(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "no output")


def _run(command: list[str], roots: NnUNetRoots, log_file: Path, what: str) -> StepUsage:
    """Run an nnU-Net command with its environment; its output goes to ``log_file``."""
    return run_logged(command, env=roots.environment(), log_file=log_file, what=what)


def _console_script(name: str) -> str:
    """Path of an nnunetv2 console script installed beside this Python."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def plan_and_preprocess(
    roots: NnUNetRoots, dataset_id: int, *, configuration: str, num_processes: int, log_file: Path
) -> StepUsage:
    """``nnUNetv2_plan_and_preprocess`` for one configuration, with the dataset integrity check."""
    command = [
        _console_script("nnUNetv2_plan_and_preprocess"),
        "-d", str(dataset_id), "-c", configuration, "-np", str(num_processes), "--verify_dataset_integrity",
    ]  # fmt: skip
    return _run(command, roots, log_file, "nnU-Net planning and preprocessing")


def train(
    roots: NnUNetRoots,
    dataset_id: int,
    *,
    configuration: str,
    budget_minutes: float,
    device: str,
    log_file: Path,
    num_iterations_per_epoch: int | None = None,
) -> StepUsage:
    """Train nnU-Net on all cases of the dataset (fold ``all``) within ``budget_minutes``.

    The model lands in :func:`model_folder` (``nnUNetTrainer__nnUNetPlans__<configuration>`` with
    ``fold_all/checkpoint_final.pth`` and ``fold_all/budget.json``).

    Args:
        num_iterations_per_epoch: None: nnU-Net's 250, or fewer where :data:`MIN_EPOCHS_IN_BUDGET` epochs
            of 250 would not fit the budget (:func:`iterations_for_budget`); a number fixes them (the
            validation iterations follow nnU-Net's 250:50 ratio, at least 1).
    """
    command = [
        sys.executable, "-m", "autoprompt.benchmarking.nnunet_baseline", "train-worker",
        str(dataset_id), configuration, "--budget-minutes", str(budget_minutes), "--device", device,
    ]  # fmt: skip
    if num_iterations_per_epoch is not None:
        command += ["--iterations-per-epoch", str(num_iterations_per_epoch)]
    return _run(command, roots, log_file, "nnU-Net training")


def model_folder(roots: NnUNetRoots, dataset_id: int, configuration: str) -> Path:
    """Where nnU-Net puts the trained model of ``dataset_id``."""
    matches = sorted(roots.results.glob(f"Dataset{dataset_id:03d}_*"))
    if not matches:
        raise AutoPromptError(
            f"no nnU-Net results for dataset {dataset_id} under {roots.results}; train first"
        )
    return model_folder_for(roots.results, matches[0].name, configuration)


def predict(
    roots: NnUNetRoots,
    trained: Path,
    input_folder: Path,
    output_folder: Path,
    *,
    tta: bool,
    device: str,
    log_file: Path,
) -> StepUsage:
    """``nnUNetv2_predict_from_modelfolder`` on a folder of ``_0000`` images."""
    command = [
        _console_script("nnUNetv2_predict_from_modelfolder"),
        "-i", str(input_folder), "-o", str(output_folder), "-m", str(trained), "-f", "all",
        "-chk", "checkpoint_final.pth", "-device", device, "-npp", "1", "-nps", "1",
    ]  # fmt: skip
    if not tta:
        command.append("--disable_tta")
    return _run(command, roots, log_file, "nnU-Net prediction")


def _time_budget_trainer(budget_seconds: float, *, fit_iterations: bool):
    """An ``nnUNetTrainer`` whose epoch count is fitted to ``budget_seconds`` after every epoch.

    The rule is autoprompt's (:func:`pipeline.training.optim.epochs_in_budget` on the time left, at the
    median time of the last epochs, at most nnU-Net's own 1000 epochs); the poly learning-rate schedule
    ends with the last fitted epoch.

    With ``fit_iterations``, steps 2 to ``1 + PROBE_STEPS`` of the first epoch are timed and the
    iterations per epoch (training and validation) are cut to :func:`iterations_for_budget`.
    The class is named ``nnUNetTrainer``: nnU-Net derives the model folder and the checkpoints'
    ``trainer_name`` from the class name, and prediction then rebuilds a plain nnUNetTrainer.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerTimeBudget(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming
        steps_done = 0

        def run_training(self) -> None:
            self.on_train_start()
            cap, epoch_seconds = self.num_epochs, []
            while self.current_epoch < self.num_epochs:
                epoch_start = time.monotonic()
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = []
                while len(outputs) < self.num_iterations_per_epoch:
                    if fit_iterations and self.steps_done == 1:
                        probe_start = time.monotonic()
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    self.steps_done += 1
                    if fit_iterations and self.steps_done == 1 + PROBE_STEPS:
                        self._fit_iterations((time.monotonic() - probe_start) / PROBE_STEPS)
                self.on_train_epoch_end(outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val = [
                        self.validation_step(next(self.dataloader_val))
                        for _ in range(self.num_val_iterations_per_epoch)
                    ]
                    self.on_validation_epoch_end(val)
                self.on_epoch_end()
                epoch_seconds.append(time.monotonic() - epoch_start)
                self._fit_epochs(epoch_seconds, cap)
            self.on_train_end()

        def _fit_epochs(self, epoch_seconds: list[float], cap: int) -> None:
            seconds_per_epoch = recent_epoch_seconds(epoch_seconds)
            epochs = epochs_in_budget(
                budget_seconds - sum(epoch_seconds), seconds_per_epoch, finished=self.current_epoch, cap=cap
            )
            if epochs != self.num_epochs:
                self.num_epochs = self.lr_scheduler.max_steps = epochs
                self.print_to_log_file(
                    f"time budget {budget_seconds:.0f} s, {seconds_per_epoch:.1f} s per epoch -> {epochs} epochs"
                )

        def set_iterations(self, iterations: int) -> None:
            """Training iterations per epoch, and validation iterations in nnU-Net's 5:1 ratio (at least 1)."""
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = max(1, iterations // 5)

        def _fit_iterations(self, seconds_per_step: float) -> None:
            iterations = max(self.steps_done, iterations_for_budget(budget_seconds, seconds_per_step))
            self.set_iterations(iterations)
            self.print_to_log_file(
                f"time budget {budget_seconds:.0f} s, {seconds_per_step:.2f} s per step -> "
                f"{iterations} iterations per epoch"
            )

    nnUNetTrainerTimeBudget.__name__ = nnUNetTrainerTimeBudget.__qualname__ = TRAINER_NAME
    return nnUNetTrainerTimeBudget


def _train_worker(
    dataset_id: int, configuration: str, budget_minutes: float, device: str, iterations_per_epoch: int | None
) -> None:
    """Runs inside the child process (nnU-Net's environment is set)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dataset_name = maybe_convert_to_dataset_name(dataset_id)
    plans = load_json(Path(join(nnUNet_preprocessed, dataset_name, "nnUNetPlans.json")))
    dataset_json = load_json(Path(join(nnUNet_preprocessed, dataset_name, "dataset.json")))
    plans["continue_training"] = False  # what nnunetv2's run_training passes to every trainer
    trainer_class = _time_budget_trainer(budget_minutes * 60.0, fit_iterations=iterations_per_epoch is None)
    trainer = trainer_class(
        plans=plans,
        configuration=configuration,
        fold="all",
        dataset_json=dataset_json,
        device=torch.device(device),
    )
    expected = model_folder_for(Path(nnUNet_results), dataset_name, configuration) / "fold_all"
    if Path(trainer.output_folder) != expected:
        raise AutoPromptError(
            f"nnU-Net chose {trainer.output_folder}, expected {expected}; check the nnunetv2 version"
        )
    if iterations_per_epoch is not None:
        trainer.set_iterations(iterations_per_epoch)
    trainer.run_training()
    save_json(
        {
            "epochs": trainer.num_epochs,
            "iterations_per_epoch": trainer.num_iterations_per_epoch,
            "steps": trainer.steps_done,
            "budget_minutes": budget_minutes,
        },
        Path(trainer.output_folder) / "budget.json",
    )


def model_folder_for(results: Path, dataset_name: str, configuration: str) -> Path:
    """``results/<dataset>/nnUNetTrainer__nnUNetPlans__<configuration>``."""
    return results / dataset_name / f"{TRAINER_NAME}__nnUNetPlans__{configuration}"


def main(argv: list[str] | None = None) -> None:
    """Child-process entry point (``python -m autoprompt.benchmarking.nnunet_baseline train-worker ...``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="step", required=True)
    worker = sub.add_parser("train-worker")
    worker.add_argument("dataset_id", type=int)
    worker.add_argument("configuration")
    worker.add_argument("--budget-minutes", type=float, required=True)
    worker.add_argument("--device", default="cpu")
    worker.add_argument(
        "--iterations-per-epoch", type=int, help="default: nnU-Net's 250, fewer where 10 epochs would not fit"
    )
    args = parser.parse_args(argv)
    _train_worker(
        args.dataset_id, args.configuration, args.budget_minutes, args.device, args.iterations_per_epoch
    )


if __name__ == "__main__":
    main()
