"""What the index and model-card templates see: numbers formatted once, SVG plots inlined
only when they are plain rlhfspec plots.
"""

from __future__ import annotations

import html
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import yaml
from markupsafe import Markup

from rlhfspec.common.version import __version__ as rlhfspec_version
from rlhfspec.runtime.handoff.facts import Facts, RunDir
from rlhfspec.runtime.handoff.layout import PARTS, human_size

# where each part's files come from, for the index and the manifest
PART_TITLES = {
    "criteria": "Preference criteria",
    "sampling_procedure": "Prompt sampling procedure",
    "playbook": "Annotator playbook and training materials",
    "annotation_qc": "Annotation QC audit",
    "reward_model_eval": "Reward-model evaluation",
    "deployment_checkpoint": "Deployment checkpoint and its evidence",
    "lineage": "Lineage",
    "model_card": "Model card",
    "index": "This index and the checksums",
}


PART_ABOUT = {
    "criteria": "What “better” means: ranked dimensions, disqualifiers, tie-breaking and scope, "
    "with the criteria version history from the lock file.",
    "sampling_procedure": "Where prompts come from and in what mix, the strata they must cover, "
    "the production holdout, and the check of the actual mix against the spec.",
    "playbook": "What annotators were given: the playbook, the worked examples, and the gold "
    "items with their rationales.",
    "annotation_qc": "Agreement, gold accuracy, position bias, fatigue, drift and version checks "
    "over every annotation batch, and how the votes were aggregated.",
    "reward_model_eval": "Holdout accuracy overall and per dimension, accuracy on shorter versus "
    "longer preferred responses, the reward-length correlation and the gates.",
    "deployment_checkpoint": "Every checkpoint's evaluation, the trajectory plots, sample "
    "outputs, the selection decision with each reward-hacking guard, human-evaluation results "
    "when present, and the selected checkpoint's weights or a reference to them.",
    "lineage": "The run's lineage record and the plan it executed, and a manifest with the "
    "sha256, size and producer of every file in this package.",
    "model_card": "A Hugging Face model card for the deployment checkpoint.",
    "index": "Start here. The checksums let anyone confirm that nothing was lost or changed "
    "since the package was built.",
}


def _num(value: Any, digits: int = 4) -> str:
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else "n/a"
    return str(value)


_SVG_NS = "{http://www.w3.org/2000/svg}"


_SVG_TAGS = frozenset(
    ("svg", "g", "text", "tspan", "rect", "line", "polyline", "polygon", "circle", "ellipse")
    + ("path", "title", "desc")
)


_SVG_ATTRS = frozenset(
    (
        "x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r", "rx", "ry", "dx", "dy", "d",
        "points", "width", "height", "viewBox", "transform", "class", "role", "fill", "stroke",
        "stroke-width", "stroke-dasharray", "stroke-linecap", "stroke-linejoin", "opacity",
        "fill-opacity", "stroke-opacity", "font-family", "font-size", "font-weight",
        "font-style", "text-anchor", "dominant-baseline", "preserveAspectRatio", "aria-label",
    )
)  # fmt: skip


_SVG_VALUE = re.compile(r"^[^<>&\"'`\\]*$")


def inline_svg(text: str) -> Markup | None:
    """An SVG plot re-serialised from an allowlist of elements and attributes, or None.

    The plot comes from the run directory, which anyone may have edited; rebuilding it from
    parsed elements (instead of pasting the file) means no script, event handler, link,
    comment or processing instruction can reach the page, whatever the file held.
    """
    if "<!" in text:  # no DOCTYPE (entities), comments or CDATA
        return None
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None

    def render(element: ET.Element) -> str | None:
        if not element.tag.startswith(_SVG_NS) or element.tag[len(_SVG_NS) :] not in _SVG_TAGS:
            return None
        tag = element.tag[len(_SVG_NS) :]
        attrs = ""  # no xmlns: the HTML parser puts an inline <svg> in the SVG namespace
        for name, value in element.attrib.items():
            if (
                name not in _SVG_ATTRS
                or not _SVG_VALUE.match(value)
                or "(" in value
                and (name != "transform" or not re.fullmatch(r"[a-z]+\([-0-9., ]*\)", value))
            ):
                return None
            attrs += f' {name}="{html.escape(value)}"'
        inner = [html.escape(element.text or "", quote=False)]
        for child in element:
            rendered = render(child)
            if rendered is None:
                return None
            inner.append(rendered + html.escape(child.tail or "", quote=False))
        return f"<{tag}{attrs}>{''.join(inner)}</{tag}>"

    out = render(root)
    return Markup(out) if out is not None else None  # noqa: S704 - rebuilt and escaped above


def _sets_table(evaluation: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, block in evaluation.get("sets", {}).items():
        rows.append(
            {
                "set": name,
                "n": _num(block.get("n")),
                "reward_mean": _num(block["reward"]["mean"]),
                "reward_std": _num(block["reward"].get("std")),
                "kl": _num(block["kl"]["mean"]),
                "words": _num(block["length"]["words_mean"]),
                "length_corr": _num(block.get("length_reward_correlation")),
                "disqualifier_rate": _num(block.get("disqualifier_rate")),
                "win_rate": _num(block.get("win_rate_vs_start")),
                "eos_rate": _num(block.get("eos_rate")),
            }
        )
    return rows


def template_context(
    run: RunDir,
    facts: Facts,
    parts: Sequence[str],
    weights: str,
    listing: list[tuple[str, str, str, int | None]],
) -> dict[str, Any]:
    """What the index and the model card templates see; numbers formatted once, here."""
    selection = facts.selection
    return {
        "meta": {
            "generator": f"rlhfspec {rlhfspec_version}",
            "name": run.name,
            "criteria_version": facts.criteria["version"],
            "criteria_sha256": facts.criteria["sha256"],
            "spec_file": run.plan["spec"]["file"],
        },
        "run": {
            "id": str(run.lineage.get("run_id", run.dir.name)),
            "finished": run.time,
            "fingerprint": run.plan["fingerprint"],
            "seed": _num(run.spec["seed"]),
        },
        "parts": list(parts),
        "weights": weights,
        "summary": _summary_rows(facts),
        "contents": _contents(parts, listing),
        "batches": facts.batches,
        "checkpoints": _checkpoint_rows(facts),
        "guards": _chosen_guards(facts),
        "selection": {
            "rule": str(selection.get("rule")),
            "reason": str(selection.get("reason", "")),
            "tie_break": str(selection.get("tie_break", "")),
            "notes": [str(n) for n in selection.get("notes", [])],
            "ranking": ", ".join(str(r) for r in selection.get("ranking", [])),
            "human_present": bool(selection.get("human_present")),
        },
        "chosen": {**facts.chosen, "folder": facts.chosen["path"]},
        "sets": _sets_table(facts.chosen_eval),
        "samples": _samples(facts),
        "svg": _trajectory_svg(run, facts) if "deployment_checkpoint" in parts else None,
        "ai": {"text": ai_text(facts.ai), "used": bool(facts.ai and facts.ai["used"])},
        "human": [
            {"label": label, **{k: _num(v) for k, v in result.items()}}
            for label, result in sorted((facts.human or {}).items())
        ],
        "reward": _reward_view(facts),
        "policy": _policy_view(facts),
        "sft": _sft_view(run.spec["sft"]),
        "criteria": _criteria_view(facts.criteria["content"]),
        "evaluation": _evaluation_view(facts),
        "warnings": facts.warnings,
    }


def _candidates(facts: Facts) -> dict[str, dict[str, Any]]:
    return {c["label"]: c for c in facts.selection.get("candidates", [])}


def _checkpoint_rows(facts: Facts) -> list[dict[str, Any]]:
    """One row per evaluated checkpoint: its numbers and the selection's verdict."""
    candidates = _candidates(facts)
    rows = []
    for row in facts.summary:
        cand = candidates.get(row["label"])
        human = (facts.human or {}).get(row["label"])
        rows.append(
            {
                "label": row["label"],
                "step": _num(row["step"]),
                "reward_mean": _num(row.get("reward_mean")),
                "kl": _num(row.get("kl_mean")),
                "words": _num(row.get("words_mean")),
                "length_corr": _num(row.get("length_reward_correlation")),
                "disqualifier_rate": _num(row.get("disqualifier_rate")),
                "win_rate": _num(row.get("win_rate_vs_start")),
                "human": f"{_num(human['win_rate'])} (n={human['n']})" if human else "n/a",
                "verdict": "start"
                if cand is None
                else ("passes" if cand["passed"] else "fails " + ", ".join(cand["failed_guards"])),
                "chosen": row["label"] == facts.chosen["label"],
            }
        )
    return rows


def _chosen_guards(facts: Facts) -> list[dict[str, Any]]:
    guards = _candidates(facts).get(facts.chosen["label"], {}).get("guards", {})
    return [
        {
            "name": name,
            "value": _num(check["value"]),
            "threshold": _num(check["threshold"]),
            "passed": check["passed"],
        }
        for name, check in guards.items()
    ]


def _samples(facts: Facts) -> list[dict[str, str]]:
    """The chosen checkpoint's samples, as text (never markup: a policy wrote them)."""
    return [
        {
            "set": name,
            "prompt": str(s.get("prompt", "")),
            "response": str(s.get("response", "")),
            "score": _num(s.get("score")),
            "flags": ", ".join(str(f) for f in s.get("flags", [])),
        }
        for name, block in facts.chosen_eval.get("sets", {}).items()
        for s in block.get("samples", [])
    ]


def _trajectory_svg(run: RunDir, facts: Facts) -> Markup | None:
    svg = inline_svg((run.dir / "eval/trajectory.svg").read_text(encoding="utf-8"))
    if svg is None:
        facts.warnings.append(
            "eval/trajectory.svg is not a plain rlhfspec plot; it is linked, not shown inline"
        )
    return svg


def _summary_rows(facts: Facts) -> list[tuple[str, str]]:
    """The index's summary table: criteria, batches, reward model, policy, selection."""
    holdout = facts.reward["eval"].get("holdout", {})
    chosen, selection = facts.chosen, facts.selection
    kl_text = ", ".join(f"{k} {_num(v)}" for k, v in sorted(facts.policy["kl"].items()))
    batch_text = ", ".join(f"{b['id']} (criteria {b['criteria_version']})" for b in facts.batches)
    return [
        ("Criteria version", f"{facts.criteria['version']} (sha256 {facts.criteria['sha256'][:12]})"),
        ("Annotation batches", batch_text or "none"),
        ("AI-assisted annotation", ai_text(facts.ai)),
        ("Reward-model holdout accuracy",
         f"{_num(holdout.get('accuracy'))} on {_num(holdout.get('pairs'))} pairs "
         f"(reward model {facts.reward['version'][:12]})"),
        ("Policy optimisation", f"{facts.policy['method'].upper()} from {facts.policy['start']}; KL: {kl_text}"),
        ("Selected checkpoint", f"{chosen['label']} (step {chosen['step']}), rule: {selection.get('rule')}"),
        ("Why", str(selection.get("reason", ""))),
    ]  # fmt: skip


def ai_text(ai: dict[str, Any] | None) -> str:
    """One line on the AI judge's share of the preference data, and which judge it was."""
    if not ai:
        return "none (every vote in the preference data is a person's)"
    judges = "; ".join(
        f"{name}: model {', '.join(map(str, j['models'])) or 'n/a'}, prompt sha256 "
        f"{', '.join(str(p)[:12] for p in j['prompt_sha256']) or 'n/a'}, "
        f"{_num(j['used'])} of {_num(j['labels'])} labels used"
        + (
            f", kappa {_num(j['kappa'])} against people on {_num(j['reviewed_pairs'])} pairs"
            if j["kappa"] is not None
            else ""
        )
        for name, j in ai["judges"].items()
    )
    return (
        f"{_num(ai['used'])} of {_num(ai['labels'])} AI-judge labels used as votes (agreement "
        f"gate {ai['gate']}), each for a pair no person labelled; {_num(ai['left_to_humans'])} "
        f"left to people's votes. {judges}"
    )


def _contents(
    parts: Sequence[str], listing: list[tuple[str, str, str, int | None]]
) -> list[dict[str, Any]]:
    """The package's parts in PARTS order, each with its files."""
    view = []
    for part in [*[p for p in PARTS if p in parts], "index"]:
        files = [
            {"path": path, "about": about, "size": human_size(size) if size is not None else ""}
            for path, owner, about, size in listing
            if owner == part
        ]
        if files:
            view.append(
                {
                    "id": part,
                    "title": PART_TITLES[part],
                    "about": PART_ABOUT[part],
                    "files": files,
                }
            )
    return view


def _reward_view(facts: Facts) -> dict[str, Any]:
    """Holdout accuracy overall, per dimension (in criteria rank) and by length; the gates."""
    holdout = facts.reward["eval"].get("holdout", {})
    rank = {d["id"]: i for i, d in enumerate(facts.criteria["content"]["dimensions"])}
    per_dim = sorted(
        holdout.get("per_dimension", {}).items(), key=lambda kv: (rank.get(kv[0], 1 << 30), kv[0])
    )
    length = holdout.get("length", {})
    weakest = min(per_dim, key=lambda kv: kv[1]["accuracy"]) if per_dim else None
    metadata = facts.reward["metadata"]
    return {
        "version": facts.reward["version"],
        "accuracy": _num(holdout.get("accuracy")),
        "pairs": _num(holdout.get("pairs")),
        "per_dimension": [
            {"id": k, "accuracy": _num(v.get("accuracy")), "pairs": _num(v.get("pairs"))}
            for k, v in per_dim
        ],
        "shorter": _num(length.get("preferred_shorter", {}).get("accuracy")),
        "shorter_pairs": _num(length.get("preferred_shorter", {}).get("pairs")),
        "longer": _num(length.get("preferred_longer", {}).get("accuracy")),
        "longer_pairs": _num(length.get("preferred_longer", {}).get("pairs")),
        "pearson": _num(length.get("pearson_reward_length")),
        "gates": [
            {
                "name": g["name"],
                "value": _num(g.get("value")),
                "threshold": _num(g.get("threshold")),
                "passed": bool(g.get("passed")),
                "overridden": bool(g.get("overridden")),
            }
            for g in metadata.get("gates", [])
        ],
        "weakest": (
            {"id": weakest[0], "accuracy": _num(weakest[1].get("accuracy"))} if weakest else None
        ),
        "batches": ", ".join(metadata.get("annotation_batches", [])),
        "base_model": str(metadata.get("base_model", "")),
    }


def _policy_view(facts: Facts) -> dict[str, Any]:
    policy = facts.policy
    return {
        "method": policy["method"],
        "method_name": "PPO" if policy["method"] == "ppo" else "DPO",
        "start": str(policy["start"]),
        "base_model": str(policy["base_model"]),
        "kl": [(k, _num(v)) for k, v in sorted(policy["kl"].items())],
        "final_kl_coef": _num(policy["final_kl_coef"]),
        "settings": [
            (k, _num(v)) for k, v in sorted(policy["settings"].items()) if not isinstance(v, dict)
        ],
        "checkpoint_every": _num(policy["checkpoint_every"]),
        "engine": _engine(policy["engine"]),
    }


def _engine(engine: dict[str, Any] | None) -> dict[str, Any]:
    """Who trained the policy, for the model card: rlhfspec, or the engine of an imported job."""
    if not engine:
        return {"external": False, "name": "rlhfspec"}
    return {
        "external": True,
        "name": str(engine.get("name")),
        "version": str(engine.get("version") or "not recorded"),
        "config_sha256": str(engine.get("exported_config_sha256")),
        "job_config": sorted(engine.get("job_config") or {}),
        "acknowledged": sorted((engine.get("acknowledged") or {}).items()),
    }


def _sft_view(sft: dict[str, Any]) -> dict[str, Any]:
    return {
        "enabled": bool(sft["enabled"]),
        "base_model": str(sft["base_model"]),
        "epochs": _num(sft["train"]["epochs"]),
        "learning_rate": _num(sft["train"]["learning_rate"]),
        "data": str(sft.get("data", "")),
    }


def _criteria_view(criteria: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": str(criteria.get("summary", "")),
        "dimensions": [
            {
                "rank": i + 1,
                "id": d["id"],
                "name": d.get("name", d["id"]),
                "description": d["description"],
            }
            for i, d in enumerate(criteria["dimensions"])
        ],  # fmt: skip
        "disqualifiers": [
            {"id": q["id"], "description": q["description"], "detected": "detect" in q}
            for q in criteria.get("disqualifiers", [])
        ],
        "tie_rule": str(criteria["tie_breaking"]["rule"]),
        "tie_then": str(criteria["tie_breaking"]["then"]),
        "in_scope": list(criteria["scope"]["in_scope"]),
        "out_of_scope": list(criteria["scope"]["out_of_scope"]),
    }


def _evaluation_view(facts: Facts) -> dict[str, Any]:
    settings = facts.chosen_eval.get("settings", {})
    return {
        "prompt_sets": ", ".join(facts.chosen_eval.get("sets", {})),
        "temperature": _num(settings.get("temperature")),
        "max_new_tokens": _num(settings.get("max_new_tokens")),
        "kl_method": str(facts.chosen_eval.get("kl_method", "")),
        "guards": [(k, _num(v)) for k, v in facts.selection.get("guards", {}).items()],
    }


def front_matter(run: RunDir, facts: Facts) -> str:
    """The model card's YAML front matter, dumped by PyYAML so that any text stays valid YAML."""
    results = []
    for name, block in facts.chosen_eval.get("sets", {}).items():
        metrics = [
            {
                "type": "reward_mean",
                "name": f"Mean reward (reward model {facts.reward['version'][:12]})",
                "value": block["reward"]["mean"],
            },
            {"type": "kl", "name": "Mean KL to the reference", "value": block["kl"]["mean"]},
        ]
        if block.get("win_rate_vs_start") is not None:
            metrics.append(
                {
                    "type": "win_rate",
                    "name": "Win rate against the starting policy (reward-model judge)",
                    "value": block["win_rate_vs_start"],
                }
            )
        results.append(
            {
                "task": {"type": "text-generation", "name": "Text generation"},
                "dataset": {
                    "type": f"rlhfspec/{run.name}-{name}",
                    "name": f"{run.name} {name.replace('_', ' ')} prompts",
                    "split": name,
                },
                "metrics": metrics,
            }
        )
    front = {
        "license": "other",
        "base_model": str(facts.policy["base_model"]),
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["rlhf", "rlhfspec", str(facts.policy["method"])],
        "datasets": [],
        "model-index": [{"name": f"{run.name}-{facts.chosen['label']}", "results": results}],
    }
    dumped: str = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000)
    return dumped
