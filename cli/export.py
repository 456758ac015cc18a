"""`rlhfspec compile SPEC --target ENGINE -o DIR --run-dir RUN`: another engine's job."""

from __future__ import annotations

from pathlib import Path

from rlhfspec.cli.output import echo
from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import display_path


def export_command(spec: Path, target: str, out_dir: Path | None, run_dir: Path | None) -> None:
    if out_dir is None or run_dir is None:
        raise RunError(
            f"--target {target} needs -o DIR (the job folder) and --run-dir RUN (a run that "
            "finished the reward_model stage, whose reward model and SFT model the job uses)",
            exit_code=2,
        )
    from rlhfspec.runtime.export.job import export_job

    result = export_job(
        spec,
        target,
        out_dir,
        run_dir,
        display=display_path(spec),
        log=lambda m: echo(m, err=True),
    )
    counts = result.counts
    echo(
        f"exported {display_path(spec)} to {target}: {out_dir}/ "
        f"({counts['exact']} settings mapped exactly, {counts['difference']} with a stated "
        f"difference, {counts['refused']} refused and acknowledged, {counts['unused']} unused); "
        f"see {out_dir / 'MAPPING.md'}"
    )
    echo(f"  single node: {out_dir / 'run_single_node.sh'}")
    echo(f"  Ray cluster: RAY_ADDRESS=http://HEAD:8265 {out_dir / 'run_ray_cluster.sh'}")
