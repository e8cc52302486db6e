"""How rank 0's decisions (the run folder, the planned and resolved config) reach the other processes of a
multi-process run before training starts, so every process trains the same network on the same split.

Under torchrun or SLURM every process runs `masksmith train` from the start: rank 0 alone takes the run
folder's lock, checks and plans, then broadcasts its decision as JSON over a process group opened here
(Lightning finds it open and uses it). Processes that Lightning's ddp launcher starts later, by running
the same command again, read the decision from an environment variable rank 0 set before starting them.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from masksmith.config import TrainConfig, UserConfig, make_config
from masksmith.errors import ConfigError, MasksmithError
from masksmith.training.parallel import DECISION_ENV, Launch, process_group_backend, processes, spawns

# Rank 0 checks and plans the data while the others wait in the first broadcast: allow for a large dataset.
HANDOFF_TIMEOUT = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Decision:
    """What rank 0 decided for the run, as every process needs it."""

    run_dir: Path
    resume: bool
    user: UserConfig

    def to_json(self) -> str:
        """The decision as JSON (never a pickle: it crosses process boundaries)."""
        return json.dumps({"run_dir": str(self.run_dir), "resume": self.resume,
                           "config": self.user.config.model_dump(mode="json"), "given": sorted(self.user.given)})

    @classmethod
    def from_json(cls, text: str) -> "Decision":
        """Read a decision written by to_json; ConfigError when it is not one."""
        try:
            values = json.loads(text)
            return cls(Path(values["run_dir"]), bool(values["resume"]),
                       UserConfig(make_config(values["config"], "rank 0's decision"), frozenset(values["given"])))
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"rank 0's decision for this run is unreadable ({error})") from None


def _open_group(config: TrainConfig, launch: Launch) -> dist.ProcessGroup | None:
    """The run's process group (the backend Lightning would pick), opened now; a gloo group for the hand-off."""
    if not dist.is_initialized():
        from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

        environment = TorchElasticEnvironment() if TorchElasticEnvironment.detect() else SLURMEnvironment()
        # Lightning's SLURM environment derives the address from the node list and the port from the job id.
        os.environ["MASTER_ADDR"] = environment.main_address
        os.environ["MASTER_PORT"] = str(environment.main_port)
        dist.init_process_group(process_group_backend(config.device), rank=launch.rank,
                                world_size=launch.world_size, timeout=HANDOFF_TIMEOUT)
    # JSON travels as a CPU tensor, which only gloo carries (nccl wants CUDA tensors).
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def _broadcast_text(text: str | None, group: dist.ProcessGroup | None) -> str:
    """Rank 0's `text` on every process (others pass None)."""
    payload = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8) if text is not None else None
    size = torch.tensor([0 if payload is None else payload.numel()], dtype=torch.int64)
    dist.broadcast(size, src=0, group=group)
    buffer = payload if payload is not None else torch.empty(int(size.item()), dtype=torch.uint8)
    dist.broadcast(buffer, src=0, group=group)
    return bytes(buffer.tolist()).decode()


class Leader:
    """Rank 0's side: publish the decision once it is made (or the error that stopped it)."""

    def __init__(self, config: TrainConfig, launch: Launch):
        self.config, self.launch = config, launch
        self.group = _open_group(config, launch) if launch.external else None
        self.published = False

    def publish(self, decision: Decision) -> None:
        """Hand the decision to the other processes (a no-op for one process, or ddp_spawn, which pickles it)."""
        if self.launch.external:
            _broadcast_text(json.dumps({"decision": decision.to_json()}), self.group)
        elif processes(self.config) > 1 and not spawns(self.config):
            os.environ[DECISION_ENV] = decision.to_json()
        self.published = True

    def fail(self, message: str) -> None:
        """Tell waiting processes that rank 0 stopped before deciding, so they stop too instead of hanging."""
        if self.launch.external and not self.published:
            _broadcast_text(json.dumps({"error": message}), self.group)
            self.published = True


@contextmanager
def leading(config: TrainConfig, launch: Launch) -> Iterator[Leader]:
    """Rank 0's run: a failure before the decision reaches the other processes; the variable is removed after."""
    leader = Leader(config, launch)
    try:
        yield leader
    except MasksmithError as error:
        leader.fail(str(error))
        raise
    except BaseException as error:
        leader.fail(f"{type(error).__name__}: {error}")
        raise
    finally:
        os.environ.pop(DECISION_ENV, None)


def receive(config: TrainConfig, launch: Launch) -> Decision:
    """A follower's side: rank 0's decision, or ConfigError with the message rank 0 stopped with."""
    if not launch.external:
        return Decision.from_json(os.environ[DECISION_ENV])
    message = json.loads(_broadcast_text(None, _open_group(config, launch)))
    if "error" in message:
        raise ConfigError(f"rank 0 stopped: {message['error']}")
    return Decision.from_json(message["decision"])


def follower_config(user: UserConfig) -> UserConfig:
    """A follower's copy: quiet (rank 0 prints and logs for the run)."""
    return user.with_values({"quiet": True})


def describe(launch: Launch, config: TrainConfig) -> str:
    """One line for the run log: how many processes train, and how they were started."""
    how = "torchrun/SLURM" if launch.external else config.strategy
    return f"{processes(config)} processes ({config.devices} per node x {config.num_nodes} nodes, {how})"

