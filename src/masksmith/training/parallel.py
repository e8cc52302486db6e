"""Lightning's launch options from the config (devices, nodes, strategy, precision), checked before any data
is read, the DDP strategies masksmith trains with, and what a run says when one of its processes dies."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher, _WorkerOutput
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from masksmith.config import TrainConfig
from masksmith.core.devices import precision_for, torch_device
from masksmith.errors import ConfigError, MasksmithError
from masksmith.models.freeze import freezes_encoder

# Set by the process that ran the stages (rank 0) for the processes Lightning's ddp launcher starts after it:
# they run the same command again and read rank 0's decisions (run folder, resolved config) from here.
DECISION_ENV = "MASKSMITH_RUN_DECISION"
# The process that started this one: for a process Lightning's launcher started, rank 0. Read at import, early in
# the command, so that a rank 0 that dies later shows as a changed parent.
PARENT_AT_START = os.getppid()
# How long rank 0, told by its watch that another process died, leaves its own error path to report it (a
# collective it waits in fails at once), before the watch reports and ends the run itself.
REPORT_GRACE_S = 5.0
WATCH_PERIOD_S = 1.0
# What a collective raises in a process whose peer is gone (gloo and NCCL, through torch.distributed).
LOST_PEER_TEXTS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                   "NCCL communicator was aborted")


@dataclass(frozen=True)
class Launch:
    """Which process of a run this is: its global rank, how many there are, and whether torchrun or SLURM
    started them all (each then runs `masksmith train` from the start)."""

    rank: int = 0
    world_size: int = 1
    external: bool = False

    @property
    def leader(self) -> bool:
        """Rank 0: it decides the run folder and the plan, and writes every file of the run."""
        return self.rank == 0


def detect_launch() -> Launch:
    """This process's place in the run, read from the environment the way Lightning detects it."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return Launch(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), external=True)
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return Launch(int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), external=True)
    if DECISION_ENV in os.environ and os.environ.get("LOCAL_RANK", "0") != "0":
        # A process Lightning's ddp launcher started: the same command, run again, with LOCAL_RANK set.
        return Launch(int(os.environ["LOCAL_RANK"]), int(os.environ.get("WORLD_SIZE", "2")))
    return Launch()


def accelerator(device: str) -> str:
    """The config's device as a Lightning accelerator name."""
    return "gpu" if torch_device(device) == "cuda" else "cpu"


def processes(config: TrainConfig) -> int:
    """How many training processes the config asks for: devices per node times nodes."""
    return config.devices * config.num_nodes


def spawns(config: TrainConfig) -> bool:
    """Whether Lightning spawns the processes from this one (ddp_spawn), which then takes no part in training."""
    return config.strategy == "ddp_spawn" and processes(config) > 1


def lightning_precision(config: TrainConfig) -> str:
    """The config's precision as Lightning names it (precision_for), checked against the device."""
    gpu = accelerator(config.device) == "gpu"
    if config.precision == "16-mixed" and not gpu:
        raise ConfigError("precision 16-mixed needs a CUDA GPU; on the CPU use bf16-mixed or 32")
    return precision_for(config.precision, gpu)


def process_group_backend(device: str) -> str:
    """The torch.distributed backend of a run's processes, as Lightning picks it: nccl on GPUs, gloo on CPUs."""
    return "nccl" if accelerator(device) == "gpu" else "gloo"


def check_launch(config: TrainConfig, launch: Launch) -> None:
    """ConfigError, before any data is read, for launch options that cannot work here."""
    lightning_precision(config)
    if accelerator(config.device) == "gpu":
        found = torch.cuda.device_count()
        if found == 0:
            raise ConfigError("device cuda: no CUDA GPU found (torch.cuda.is_available() is False)")
        if config.devices > found:
            raise ConfigError(f"devices {config.devices}: this machine has {found} CUDA GPU(s)")
    if launch.external:
        if config.strategy == "ddp_spawn":
            raise ConfigError("strategy ddp_spawn starts its own processes; under torchrun or srun use ddp (or auto)")
        if processes(config) != launch.world_size:
            raise ConfigError(f"the launcher started {launch.world_size} processes but devices {config.devices} x "
                              f"num_nodes {config.num_nodes} = {processes(config)}; make them equal")
    elif config.num_nodes > 1:
        raise ConfigError("num_nodes > 1 needs a launcher on every node: torchrun or SLURM's srun (see docs/deploy.md)")
    if config.folds is not None and (processes(config) > 1 or launch.external):
        raise ConfigError("cross-validation (folds) trains in one process; drop devices/num_nodes or folds")


def build_strategy(config: TrainConfig, launch: Launch) -> str | Strategy:
    """Lightning's strategy: its own single-device choice for one process, DDP for several."""
    if processes(config) == 1 and not launch.external:
        return "auto"
    # A frozen encoder's parameters get no gradient in its first epochs (frozen stages: in all), which DDP must be
    # told to expect.
    unused = freezes_encoder(config.freeze_encoder_epochs, config.frozen_stages)
    if config.strategy == "ddp_spawn":
        return WeightsOnlySpawnStrategy(find_unused_parameters=unused)
    return WatchedDDPStrategy(find_unused_parameters=unused)


class _CheckpointsOnlyLauncher(_MultiProcessingLauncher):
    """ddp_spawn's launcher without its hand-over of the last weights through a temporary file: masksmith's
    checkpoint IO loads only checkpoints inside the run folder, and the main process reads best.ckpt itself."""

    def _collect_rank_zero_results(self, trainer: Any, results: Any) -> _WorkerOutput | None:
        output = super()._collect_rank_zero_results(trainer, results)
        if output is None or output.weights_path is None:
            return output
        shutil.rmtree(Path(output.weights_path).parent, ignore_errors=True)  # Lightning's own mkdtemp folder
        return output._replace(weights_path=None)


class WeightsOnlySpawnStrategy(DDPStrategy):
    """DDP started by torch.multiprocessing's spawn (strategy ddp_spawn), with the launcher above."""

    def __init__(self, **kwargs: Any):
        super().__init__(start_method="spawn", **kwargs)

    def _configure_launcher(self) -> None:
        self._launcher = _CheckpointsOnlyLauncher(self, start_method=self._start_method)


# --- a process of the run dies -----------------------------------------------------------------------------------

_report_lock = threading.Lock()
_reported = False


def _claim_report() -> bool:
    """True for the first caller only: rank 0's error path and its watch must not both report one death."""
    global _reported
    with _report_lock:
        first, _reported = not _reported, True
        return first


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def stopped_message(rank: int | None, world_size: int, how: str, run_dir: Path) -> str:
    """The one line a run's surviving process prints when another one died: which, how, and how to go on."""
    who = f"rank {rank} of {world_size}" if rank is not None else f"another of its {world_size} processes"
    return (f"training stopped: {who} {how}; the checkpoints of the finished epochs are kept: continue with "
            f"masksmith train --resume {run_dir}")


class ProcessWatch(threading.Thread):
    """Rank 0's watch over the processes Lightning's launcher started (ranks 1..N-1). Where Lightning's own watch
    kills rank 0 with a line about zombies, this one reports which rank died and how to resume; it lets rank 0's
    error path report first, which a collective waiting for the dead process reaches at once."""

    def __init__(self, children: Sequence[subprocess.Popen], world_size: int, run_dir: Path):
        super().__init__(daemon=True, name="masksmith-process-watch")
        self.children, self.world_size, self.run_dir = list(children), world_size, run_dir
        self.stopping = False  # set when rank 0 ends the children itself

    def dead_child(self) -> tuple[int, int] | None:
        """(rank, returncode) of the first child that ended with an error, or None."""
        for rank, child in enumerate(self.children, start=1):
            if child.poll() not in (None, 0):
                return rank, child.returncode
        return None

    def end_children(self) -> None:
        """SIGKILL the children still running: without their peer they could only fail, or hang, one by one."""
        self.stopping = True
        for child in self.children:
            if child.poll() is None:
                child.kill()

    def run(self) -> None:
        while not self.stopping:
            time.sleep(WATCH_PERIOD_S)
            if all(child.poll() == 0 for child in self.children):
                return
            dead = self.dead_child()
            if dead is None or self.stopping:
                continue
            time.sleep(REPORT_GRACE_S)
            if self.stopping or not _claim_report():
                return
            self.end_children()
            message = stopped_message(dead[0], self.world_size, _how_it_ended(dead[1]), self.run_dir)
            sys.stderr.write(f"error: {message}\n")
            sys.stderr.flush()
            os._exit(2)  # rank 0 may be busy for minutes before it next talks to the dead process


class _WatchedLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher of ranks 1..N-1 (the same command, run again with LOCAL_RANK set), watched by
    ProcessWatch instead of Lightning's observer."""

    watch: ProcessWatch | None = None

    def launch(self, function: Callable, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            run_dir = Path(trainer.default_root_dir) if trainer is not None else Path(".")
            self.watch = ProcessWatch(self.procs, self.num_processes * self.num_nodes, run_dir)
            self.watch.start()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


class WatchedDDPStrategy(DDPStrategy):
    """DDP whose processes Lightning's launcher starts (strategy ddp or auto), watched by ProcessWatch."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            assert self.cluster_environment is not None
            self._launcher = _WatchedLauncher(self.cluster_environment, self.num_processes, self.num_nodes)


def _lost_peer(error: BaseException) -> bool:
    """Whether `error` is what a collective raises when a process it waits for is gone."""
    text = str(error)
    return isinstance(error, torch.distributed.DistError) or any(marker in text for marker in LOST_PEER_TEXTS)


def peer_failure(error: BaseException, launch: Launch, world_size: int, run_dir: Path,
                 launcher: Any = None) -> MasksmithError | None:
    """The one-line error to raise instead of `error` when another process of a run died, else None.

    Rank 0 under Lightning's launcher knows its children's exit codes (it waits a moment for the dead one to
    be reaped) and ends the others; a process Lightning started sees its parent, rank 0, gone; a process
    torchrun or SLURM started only knows that a collective lost its peer."""
    from torch.multiprocessing import ProcessExitedException

    if isinstance(error, ProcessExitedException):  # ddp_spawn: torch.multiprocessing names the process
        how = f"was killed by {error.signal_name}" if error.signal_name else f"exited with code {error.exit_code}"
        return MasksmithError(stopped_message(error.error_index, world_size, how, run_dir))
    watch = getattr(launcher, "watch", None)
    if isinstance(watch, ProcessWatch):
        dead = None
        for _ in range(30):  # the kernel reports a killed child within milliseconds; a crashing one may take longer
            dead = watch.dead_child()
            if dead is not None:
                break
            time.sleep(0.1)
        watch.end_children()
        if dead is None:
            return None
        if not _claim_report():  # the watch is reporting it and ends this process
            while True:
                time.sleep(1)
        return MasksmithError(stopped_message(dead[0], world_size, _how_it_ended(dead[1]), run_dir))
    if not _lost_peer(error):
        return None
    if not launch.external and launch.rank > 0 and os.getppid() != PARENT_AT_START:
        return MasksmithError(stopped_message(0, world_size, "stopped", run_dir))
    other = 1 - launch.rank if world_size == 2 else None
    return MasksmithError(stopped_message(other, world_size, "stopped", run_dir))
