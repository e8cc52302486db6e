"""Time the data-preparation phase of `masksmith train` (discover, check, split, labels, pair validation).

Runs masksmith.train on a dataset and stops it when the network is about to be built, so only the
data work is timed; counts how often the data was discovered and how often each step ran.

    OMP_NUM_THREADS=1 python benchmarks/data_prep.py /work/shared/data/clothing-co-parsing --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import masksmith.data.discover as discover_module
import masksmith.training.stages as stages_module
from masksmith.data.check import check_dataset
from masksmith.data.labels import survey_labels
from masksmith.data.validate import sample_problem

# The steps counted: every discovery goes through discover_dataset, every label decision through survey_labels.
STEPS = (discover_module.discover_dataset, check_dataset, survey_labels, sample_problem)


class _Stop(Exception):
    """Raised where the network would be built: the data phase is over."""


def _patch_everywhere(original, wrapper) -> list[tuple[object, str]]:
    """Replace `original` by `wrapper` in every loaded masksmith module that holds it (imports bind copies)."""
    patched = []
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("masksmith"):
            for name, value in list(vars(module).items()):
                if value is original:
                    setattr(module, name, wrapper)
                    patched.append((module, name))
    return patched


def one_run(data: Path) -> tuple[float, Counter, Counter]:
    """Seconds of one data phase, and the calls and seconds per step."""
    import masksmith.planning.stage  # noqa: F401 - loaded, so its imported names get patched too

    calls: Counter = Counter()
    seconds: Counter = Counter()
    restore: list[tuple[object, str, object]] = []

    def counted(function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                calls[function.__name__] += 1
                seconds[function.__name__] += time.perf_counter() - started
        return wrapper

    def stop(*args, **kwargs):
        raise _Stop

    for function, wrapper in [(f, counted(f)) for f in STEPS] + [(stages_module.build_network, stop)]:
        restore += [(module, name, function) for module, name in _patch_everywhere(function, wrapper)]
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as out:
            masksmith.train(data, epochs=1, model="fcn-lite", model_options={"base_channels": 4, "depth": 2},
                            out=str(Path(out) / "run"), quiet=True)
    except _Stop:
        pass
    finally:
        for module, name, function in restore:
            setattr(module, name, function)
    return time.perf_counter() - started, calls, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    times = []
    for _ in range(args.repeat):
        total, calls, seconds = one_run(args.data)
        times.append(total)
    print(f"data phase of masksmith train on {args.data}: median {statistics.median(times):.1f} s "
          f"(runs: {', '.join(f'{t:.1f}' for t in times)})")
    print("| step | calls | seconds (last run) |\n| --- | --- | --- |")
    for name in sorted(calls):
        print(f"| {name} | {calls[name]} | {seconds[name]:.2f} |")


if __name__ == "__main__":
    main()
