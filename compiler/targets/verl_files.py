"""The verl job's text files: MAPPING.md, the launch scripts and the export manifest.

The launch scripts read `overrides.txt` line by line (so the overrides live in
one reviewed file), replace `{job_dir}` with the job folder's absolute path,
refuse a verl outside the supported versions, and pass anything given on
their command line after ours (engine tuning such as tensor parallelism, or
W&B). `RLHFSPEC_VERL_PRINT=1` prints the final argument list instead of
running it; the composition test feeds exactly that list to verl's Hydra.
"""

from __future__ import annotations

import json
from typing import Any

from rlhfspec.common.hashing import sha256_bytes
from rlhfspec.compiler.targets import verl
from rlhfspec.compiler.targets.verl_rules import Row

STATUS_WORDS = {
    "exact": "mapped exactly",
    "difference": "mapped with a stated difference",
    "refused": "refused",
    "unused": "not used by this method",
}


def _cell(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text.replace("|", "\\|").replace("\n", " ")


def _keys(row: Row) -> str:
    if not row.keys:
        return "-"
    return "<br>".join(f"`{k}={verl.hydra_value(v)}`" for k, v in row.keys.items())


def mapping_md(
    result: verl.Check, keys: dict[str, tuple[Any, str]], facts: verl.JobFacts, plan: dict[str, Any]
) -> str:
    """Every spec setting with its verl keys, every default we override, every refusal."""
    counts = result.counts()
    lines = [
        f"# verl job for `{plan['spec']['name']}`: how the spec maps to verl",
        "",
        f"Exported from plan `{plan['fingerprint'][:12]}` for verl {verl.SUPPORTED_VERL} "
        f"(keys and defaults checked against verl {verl.VERL_VERSION}). The policy starts from "
        f"{facts.start}; the reward model is the run's gated reward model "
        f"(sha256 `{facts.reward_model_sha256[:12]}`).",
        "",
        f"Settings: {counts['exact']} mapped exactly, {counts['difference']} mapped with a "
        f"stated difference, {counts['refused']} refused "
        f"({sum(1 for r in result.rows if r.acknowledged)} acknowledged in the spec), "
        f"{counts['unused']} not used by this method.",
        "",
        "## Every spec setting",
        "",
        "| spec setting | value | verl keys | status | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += _settings_rows(result)
    lines += _override_section(keys)
    lines += _refused_section(result)
    lines += [
        "",
        "## Data",
        "",
        f"- `data/train.parquet`: {facts.train_prompts} training prompts as chat messages "
        "(the evaluation sets and the production holdout are never among them, by id nor by "
        "text).",
        f"- `data/val.parquet`: the {facts.val_prompts} prompts of the validation set, which "
        "verl loads but, with validation off, does not train on.",
        "- `eval/prompt_sets.json`: the evaluation sets rlhfspec evaluates the imported "
        "checkpoints on.",
        "",
        "Bring the checkpoints back with `rlhfspec run SPEC --run-dir RUN --stage evaluate "
        "--policy-checkpoints THIS_FOLDER`, then `--stage select` and `--stage handoff`.",
    ]
    return "\n".join(lines) + "\n"


def _settings_rows(result: verl.Check) -> list[str]:
    """One table row per spec setting: its verl keys and whether it maps exactly."""
    lines = []
    for row in result.rows:
        status = STATUS_WORDS[row.status]
        if row.acknowledged:
            status += f" (acknowledged: {_cell(row.acknowledged)})"
        lines.append(
            f"| `{row.setting}` | {_cell(row.value)} | {_keys(row)} | {status} | "
            f"{_cell(row.note)} |"
        )
    return lines


def _override_section(keys: dict[str, tuple[Any, str]]) -> list[str]:
    """The verl keys set away from verl's default, with why; the rest named in one line."""
    lines = [
        "",
        "## verl defaults overridden on purpose",
        "",
        "Every key the job sets whose value differs from verl's default, and why.",
        "",
        "| verl key | verl default | this job | why |",
        "| --- | --- | --- | --- |",
    ]
    same = []
    for key, (value, why) in sorted(keys.items()):
        default = verl.VERL_DEFAULTS.get(key, "(no default)")
        reason = f"from `{why}`" if why.startswith(("policy.", "compute.", "seed")) else why
        if default == value:
            same.append(f"`{key}`")
            continue
        lines.append(
            f"| `{key}` | `{verl.hydra_value(default)}` | `{verl.hydra_value(value)}` | "
            f"{_cell(reason)} |"
        )
    return lines + [
        "",
        "Set to verl's own default, stated anyway so a change of verl's defaults cannot change "
        "the job: " + ", ".join(same) + ".",
    ]


def _refused_section(result: verl.Check) -> list[str]:
    """The settings verl cannot honour, each with whether the spec acknowledged it."""
    lines = ["", "## Refused settings", ""]
    refused = [r for r in result.rows if r.status == "refused"]
    if not refused:
        lines.append("None: every setting maps.")
    for row in refused:
        lines.append(
            f"- `{row.setting}` = {_cell(row.value)}: {row.note}. Acknowledged: "
            f"{_cell(row.acknowledged)}."
        )
    return lines


_READ_OVERRIDES = r"""JOB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
args=()
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in ''|'#'*) continue ;; esac
  args+=("${line//\{job_dir\}/$JOB_DIR}")
done < "$JOB_DIR/overrides.txt"
args+=("hydra.run.dir=$JOB_DIR/outputs")
if [ "${RLHFSPEC_VERL_PRINT:-}" = 1 ]; then printf '%s\n' "${args[@]}" "$@"; exit 0; fi
RLHFSPEC_JOB_DIR="$JOB_DIR" python3 - <<'PY'
import datetime, json, os, pathlib, socket, sys
from importlib.metadata import PackageNotFoundError, version
try:
    found = version("verl")
except PackageNotFoundError:
    sys.exit("verl is not installed: pip install 'verl@SUPPORTED@'")
major, minor = (int(p) for p in found.split(".")[:2])
if (major, minor) != (@MAJOR@, @MINOR@):
    sys.exit(f"verl {found} is installed; this job was exported for verl @SUPPORTED@")
out = pathlib.Path(os.environ["RLHFSPEC_JOB_DIR"]) / "outputs"
out.mkdir(exist_ok=True)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
record = {"format": "rlhfspec.verl_launch/1", "engine": "verl", "version": found,
          "started": now, "host": socket.gethostname()}
(out / "launch.json").write_text(json.dumps(record, indent=2) + "\n")
PY
"""


def _script(head: str, body: str) -> str:
    major, minor = (int(p) for p in verl.VERL_VERSION.split(".")[:2])
    preamble = (
        _READ_OVERRIDES.replace("@SUPPORTED@", verl.SUPPORTED_VERL)
        .replace("@MAJOR@", str(major))
        .replace("@MINOR@", str(minor))
    )
    return f"#!/usr/bin/env bash\n{head}set -euo pipefail\n{preamble}{body}"


def single_node_script(plan: dict[str, Any]) -> str:
    head = (
        f"# The verl PPO job of spec {plan['spec']['name']} (plan {plan['fingerprint'][:12]}) "
        "on this machine's GPUs.\n"
        "# Usage: ./run_single_node.sh [extra Hydra overrides, e.g. "
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.6]\n"
    )
    body = 'cd "$JOB_DIR"\nexec python3 -m verl.trainer.main_ppo "${args[@]}" "$@"\n'
    return _script(head, body)


def ray_cluster_script(plan: dict[str, Any]) -> str:
    head = (
        f"# The verl PPO job of spec {plan['spec']['name']} (plan {plan['fingerprint'][:12]}) "
        "submitted to a Ray cluster.\n"
        "# 1. Put this folder on a filesystem every node mounts at the same path.\n"
        "# 2. Head node:   ray start --head --dashboard-host=0.0.0.0\n"
        "#    Each worker: ray start --address=HEAD_IP:6379\n"
        "# 3. RAY_ADDRESS=http://HEAD_IP:8265 ./run_ray_cluster.sh [extra Hydra overrides]\n"
        "# trainer.nnodes and trainer.n_gpus_per_node come from export.verl.nnodes and "
        "compute.num_processes.\n"
    )
    body = (
        ': "${RAY_ADDRESS:?set RAY_ADDRESS to the head node dashboard, e.g. '
        'http://HEAD_IP:8265}"\n'
        'cd "$JOB_DIR"\n'
        'exec ray job submit --address "$RAY_ADDRESS" -- '
        'python3 -m verl.trainer.main_ppo "${args[@]}" "$@"\n'
    )
    return _script(head, body)


def manifest(
    plan: dict[str, Any],
    result: verl.Check,
    facts: verl.JobFacts,
    overrides_sha256: str,
    run: dict[str, Any],
) -> dict[str, Any]:
    """What the import checks and records: which plan, which verl, which exact overrides."""
    return {
        "format": verl.EXPORT_FORMAT,
        "engine": "verl",
        "verl_version_checked": verl.VERL_VERSION,
        "verl_supported": verl.SUPPORTED_VERL,
        "spec": plan["spec"]["name"],
        "plan_fingerprint": plan["fingerprint"],
        # the plan's fingerprint depends on where it was compiled; the spec's bytes do not
        "spec_sha256": plan["spec"]["sha256"],
        "criteria_version": plan["criteria"]["version"],
        "run": run,
        "overrides_file": "overrides.txt",
        "overrides_sha256": overrides_sha256,
        "mapping": result.counts(),
        "acknowledged": {r.setting: r.acknowledged for r in result.rows if r.acknowledged},
        "train_prompts": facts.train_prompts,
        "reward_model_sha256": facts.reward_model_sha256,
        "files": dict(sorted(facts.files.items())),
    }


def render(
    plan: dict[str, Any], result: verl.Check, facts: verl.JobFacts, run: dict[str, Any]
) -> dict[str, bytes]:
    """The job's text files; `facts` describes the data and models the runtime prepared."""
    keys = verl.job_keys(result, facts)
    text = verl.overrides_text(verl.overrides(keys), plan)
    files = {
        "overrides.txt": text,
        "MAPPING.md": mapping_md(result, keys, facts, plan),
        "run_single_node.sh": single_node_script(plan),
        "run_ray_cluster.sh": ray_cluster_script(plan),
    }
    out = {name: body.encode("utf-8") for name, body in files.items()}
    sha = sha256_bytes(out["overrides.txt"])
    doc = manifest(plan, result, facts, sha, run)
    out[verl.MANIFEST] = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return out
