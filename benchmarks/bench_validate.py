"""Wall time of `rlhfspec validate` as a fresh process, against the bare imports it needs.

Run: python benchmarks/bench_validate.py [--runs 7]

Prints, side by side from one run: the median wall time of
`rlhfspec validate specs/support-assistant.yaml`, of a bare `python -c` that
only imports jsonschema, yaml, jinja2 and click, their ratio (goal <= 1.5),
and the time for a spec 20 times larger.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rlhfspec.compiler.yaml_loader import load_yaml_file

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "support-assistant.yaml"


def median_times(commands: list[list[str]], runs: int, cwd: Path) -> list[float]:
    """Median wall time of each command; runs interleave so load drifts hit all alike."""
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for argv, bucket in zip(commands, times, strict=True):
            start = time.perf_counter()
            subprocess.run(
                argv, cwd=cwd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def large_spec(folder: Path, factor: int) -> Path:
    """The example spec with every list repeated `factor` times (ids kept unique)."""
    spec = load_yaml_file(SPEC).data  # YAML 1.2: the key `on` stays a string
    crit = spec["criteria"]
    crit["dimensions"] = [
        dict(d, id=f"{d['id']}_{i}") for i in range(factor) for d in crit["dimensions"]
    ]
    crit["disqualifiers"] = [
        dict(d, id=f"{d['id']}_{i}") for i in range(factor) for d in crit["disqualifiers"]
    ]
    crit["examples"] = [
        dict(e, decided_by=f"{e['decided_by']}_{i}")
        for i in range(factor)
        for e in crit["examples"]
    ]
    sources = spec["prompts"]["sources"]
    spec["prompts"]["sources"] = [
        dict(s, id=f"{s['id']}-{i}") for i in range(factor) for s in sources
    ]
    batches = spec["annotation"]["batches"]
    spec["annotation"]["batches"] = [
        dict(b, id=f"{b['id']}-{i}") for i in range(factor) for b in batches
    ]
    out = folder / "large.yaml"
    # PyYAML's dumper quotes `on` (a YAML 1.1 boolean), which reads back as the string key
    out.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    exe = shutil.which("rlhfspec") or str(Path(sys.executable).with_name("rlhfspec"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "specs"
        shutil.copytree(ROOT / "specs", folder)
        factor = 20
        big = large_spec(folder, factor)
        while big.stat().st_size < 20 * SPEC.stat().st_size:  # 20 times larger in bytes
            factor += 5
            big = large_spec(folder, factor)
        check = subprocess.run([exe, "validate", str(big)], capture_output=True, text=True)
        if check.returncode != 0:
            print(check.stdout, check.stderr)
            return 1
        bare, ours, large = median_times(
            [
                [sys.executable, "-c", "import jsonschema, yaml, jinja2, click"],
                [exe, "validate", str(SPEC)],
                [exe, "validate", str(big)],
            ],
            args.runs,
            ROOT,
        )
        size_ratio = big.stat().st_size / SPEC.stat().st_size
    print(f"runs per command: {args.runs} (median wall time, fresh process)")
    print(f"{'command':<58} {'seconds':>8}")
    print(f"{'python -c import jsonschema, yaml, jinja2, click':<58} {bare:8.3f}")
    print(f"{'rlhfspec validate specs/support-assistant.yaml':<58} {ours:8.3f}")
    print(f"{'rlhfspec validate <20x spec> (' + f'{size_ratio:.0f}x bytes)':<58} {large:8.3f}")
    print(f"ratio validate / bare imports: {ours / bare:.2f} (goal <= 1.5)")
    print(f"{size_ratio:.0f}x larger spec: {large / ours:.2f}x the time of the example")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
