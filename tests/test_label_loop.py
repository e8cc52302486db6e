"""benchmarks/label_loop.py --dry (the `label-loop` run of benchmarks/run.sh) on the clothing photos: the top-ranked
images are the ranking's first, the random ones come from the same pool, each joins the start images' training
split only, and every model is scored on the same held-out test images."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_label_loop_dry_run(ccp_dir, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MASKSMITH_DATA": str(ccp_dir.parent)}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "label_loop.py"), "--dry", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=1800, env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "label-loop-dry"
    summary = json.loads((folder / "summary.json").read_text())
    assert list(summary["scores"]) == ["before", "+4 top-ranked", "+4 random", "+0 (training only)"]
    with (folder / "ranked" / "ranking.csv").open(newline="") as handle:
        ranking = [Path(row["image"]).stem for row in csv.DictReader(handle)]
    pool = sorted(path.stem for path in (folder / "pool" / "images").iterdir())
    assert sorted(ranking) == pool and summary["top_ranked"] == ranking[:4]
    assert set(summary["random"]) <= set(pool) and len(set(summary["random"])) == 4

    def names(data: str, split: str) -> set[str]:
        return {path.stem for path in (folder / data / split / "masks").iterdir()}

    start = names("data-start", "train")
    assert names("data-top-ranked", "train") == start | set(ranking[:4])
    assert names("data-random", "train") == start | set(summary["random"])
    assert names("data-none", "train") == start
    assert not (start | names("data-start", "val")) & set(pool)
    test = names("data-start", "test")
    assert all(names(data, "test") == test for data in ("data-top-ranked", "data-random", "data-none"))
    assert not test & (set(pool) | start)
    for label in ("top-ranked", "random", "none"):
        config = (folder / f"round1-{label}" / "config.yaml").read_text()
        assert "init:" in config and "round0/model.msb" in config
    table = result.stdout.splitlines()[-5:]
    assert table[0].split() == ["before", "+4", "top-ranked", "+4", "random", "+0", "(training", "only)"]
    assert table[1].startswith("mIoU (present classes)") and table[-1].startswith("epochs in the budget")
