"""Lightning's launch options from the config (devices, nodes, strategy, precision), checked before any data
is read, and the DDP strategies masksmith trains with."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher, _WorkerOutput

from masksmith.config import TrainConfig
from masksmith.errors import ConfigError

# Set by the process that ran the stages (rank 0) for the processes Lightning's ddp launcher starts after it:
# they run the same command again and read rank 0's decisions (run folder, resolved config) from here.
DECISION_ENV = "MASKSMITH_RUN_DECISION"


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
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if device == "cuda" else "cpu"


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


def precision_for(precision: str, gpu: bool) -> str:
    """A config precision as Lightning names it; auto is 16-bit mixed on CUDA, 32-bit elsewhere."""
    if precision == "auto":
        return "16-mixed" if gpu else "32-true"
    return "32-true" if precision == "32" else precision


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
        raise ConfigError("num_nodes > 1 needs a launcher on every node: torchrun or SLURM's srun (see README)")
    if config.folds is not None and (processes(config) > 1 or launch.external):
        raise ConfigError("cross-validation (folds) trains in one process; drop devices/num_nodes or folds")


def build_strategy(config: TrainConfig, launch: Launch) -> str | Strategy:
    """Lightning's strategy: its own single-device choice for one process, DDP for several."""
    if processes(config) == 1 and not launch.external:
        return "auto"
    # A frozen encoder's parameters get no gradient in its first epochs (frozen stages: in all), which DDP must be
    # told to expect.
    unused = config.freeze_encoder_epochs > 0 or config.frozen_stages > 0
    if config.strategy == "ddp_spawn":
        return WeightsOnlySpawnStrategy(find_unused_parameters=unused)
    return DDPStrategy(find_unused_parameters=unused)


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
