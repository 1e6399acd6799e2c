"""Shared benchmark helpers: interleaved timing, summaries, machine and version info, JSON output."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODEL_DIR = Path.home() / ".cache" / "actlab" / "models" / "smollm2-135m"
THREADS = 2
BATCH, SEQ, SEED = 4, 512, 0

QUIET_CORES = 0.1  # a call is "quiet" when other processes (and steal) used < 0.1 core during it
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Runs:
    """Per variant, per timed round: wall-clock seconds and the mean number of cores that other
    processes (plus hypervisor steal) used during the call."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    foreign: dict[str, list[float]] = field(default_factory=dict)


def random_ids(vocab: int, batch: int = BATCH, seq: int = SEQ, seed: int = SEED) -> torch.Tensor:
    """`[batch, seq]` token ids drawn uniformly from a fixed seed."""
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds used by everything on the machine incl. steal, CPU seconds used by this process)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    own = [int(x) for x in Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[11:13]]
    return (user + nice + system + irq + softirq + steal) / _TICK, sum(own) / _TICK


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Runs:
    """Time `repeats` rounds after `warmup` untimed ones.

    Every round runs each variant once, back to back, so load drift on a shared machine hits all
    variants alike; the order rotates by one each round so no variant always runs first.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    runs = Runs({name: [] for name in names}, {name: [] for name in names})
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            all0, own0 = _cpu_seconds()
            start = time.perf_counter()
            variants[name]()
            wall = time.perf_counter() - start
            all1, own1 = _cpu_seconds()
            runs.wall[name].append(wall)
            runs.foreign[name].append(max(0.0, (all1 - all0) - (own1 - own0)) / wall)
    return runs


def summary(runs: Runs) -> dict[str, dict[str, float | list[float]]]:
    """Median, minimum and all timings (seconds) of every variant, with the foreign load of each call."""
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "all_s": [round(x, 4) for x in t],
                   "foreign_cores": [round(x, 2) for x in runs.foreign[name]]}
            for name, t in runs.wall.items()}


def ratio(runs: Runs, num: str, den: str) -> dict[str, float | int | None]:
    """`num` time over `den` time, four ways: ratio of medians, median of per-round (paired) ratios,
    the same over quiet rounds only (both calls quiet, see QUIET_CORES), ratio of minima; and the
    range of the paired ratios (the spread is the resolution of the measurement).

    A paired ratio compares calls made seconds apart; on a shared machine the quiet paired ratio
    is the most trustworthy, the others show how much load distorted the rest.
    """
    a, b = runs.wall[num], runs.wall[den]
    paired = [x / y for x, y in zip(a, b, strict=True)]
    quiet = [p for p, fa, fb in zip(paired, runs.foreign[num], runs.foreign[den], strict=True)
             if fa < QUIET_CORES and fb < QUIET_CORES]
    return {
        "ratio_of_medians": statistics.median(a) / statistics.median(b),
        "median_paired_ratio": statistics.median(paired),
        "median_paired_ratio_quiet": statistics.median(quiet) if quiet else None,
        "quiet_rounds": len(quiet),
        "rounds": len(paired),
        "ratio_of_minima": min(a) / min(b),
        "paired_ratio_range": [min(paired), max(paired)],
    }


def describe(r: dict) -> str:
    """One line for a `ratio` result."""
    lo, hi = r["paired_ratio_range"]
    return (f"paired {r['median_paired_ratio']:.3f} (range {lo:.3f}-{hi:.3f}, {r['quiet_rounds']}/{r['rounds']} "
            f"rounds quiet), medians {r['ratio_of_medians']:.3f}")


def machine() -> dict[str, object]:
    """CPU, core count, torch threads, OS and the current load average."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of `packages`, plus the git commit of the checkout (`-dirty` if modified)."""
    found = {p: importlib.metadata.version(p) for p in packages}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        found["actlab_git"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        found["actlab_git"] = "unknown"
    return found


def environment(before: dict, *packages: str) -> dict:
    """The machine before and after a run and the package versions, for a result file."""
    return {"machine_before": before, "machine_after": machine(), "versions": versions(*packages)}


def write_json(name: str, data: dict) -> Path:
    """Write `data` to `bench/results/<name>` and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
