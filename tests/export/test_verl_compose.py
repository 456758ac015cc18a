"""The exported overrides against verl itself: its Hydra config for main_ppo and its config
classes, on CPU. verl is installed without its dependencies by .ci/run (it pins an older
transformers), plus what composing its config imports (the `verl-check` extra); CI sets
RLHFSPEC_REQUIRE_VERL=1 so a missing verl fails instead of skipping."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("RLHFSPEC_REQUIRE_VERL") != "1":
    pytest.importorskip("verl")
    pytest.importorskip("hydra")
pytest.importorskip("transformers")

from rlhfspec.compiler.compile import compile_spec  # noqa: E402
from rlhfspec.compiler.targets import get_target, spec_locator  # noqa: E402
from rlhfspec.compiler.targets import verl as target  # noqa: E402
from rlhfspec.runtime.train.formatting import format_prompt, full_text  # noqa: E402
from tests.conftest import SPECS  # noqa: E402
from tests.export.test_verl_mapping import ACKS, with_export  # noqa: E402
from tests.export.verl_check import (  # noqa: E402
    check_config,
    compose,
    default_problems,
    launch_args,
)

CORPUS = [
    "My parcel is late. Order 48213.",
    "How do I change the email address on my account?",
    "Thanks! Open Settings, choose Account, then Email.",
] * 20


SCALED = """compute:
  mixed_precision: bf16
  strategy: fsdp
  fsdp: {cpu_offload: true}
  lora: {enabled: true, r: 8, alpha: 16, target_modules: [all-linear]}
"""


def build_job(root: Path, extra: str = "") -> tuple[Path, dict[str, Any]]:
    """The example spec's job, with tiny models standing in for the run's SFT and reward
    models (the end-to-end test in test_verl_roundtrip.py exports a real run)."""
    from rlhfspec.runtime.export.verl_job import (
        prompt_rows,
        prompt_tokens,
        set_chat_template,
        write_parquet,
    )
    from rlhfspec.runtime.train.models import build_tiny, load_reward_model, load_tokenizer

    shutil.copytree(SPECS / "support-assistant", root / "support-assistant")
    spec = root / "support-assistant.yaml"
    shutil.copy(SPECS / "support-assistant.yaml", spec)
    shutil.copy(SPECS / "support-assistant.lock.json", root)
    acks = {k: v for k, v in ACKS.items() if not (extra and k.startswith("compute."))}
    with_export(spec, acks, extra)
    if extra:
        # verl's LoRA-rank check for vLLM imports vllm (GPU-only); SGLang's path has none
        text = spec.read_text(encoding="utf-8")
        spec.write_text(text.replace("  verl:\n", "  verl:\n    rollout_engine: sglang\n"))
    plan = compile_spec(spec, root / "build").plan
    assert plan is not None
    checked = get_target("verl").check(plan, spec_locator(spec), spec.name)
    assert checked.ok, checked.diagnostics
    job = root / "job"
    tiny = build_tiny(CORPUS, seed=0, out_dir=job / "model", vocab_size=300)
    tokenizer = load_tokenizer(tiny)
    reward = load_reward_model(tiny, tokenizer=tokenizer, seed=0)
    reward.save_pretrained(job / "reward_model", safe_serialization=True)
    tokenizer.save_pretrained(job / "reward_model")
    for folder in ("model", "reward_model"):
        set_chat_template(job / folder, None, False)  # the plain format: a run without a template
    write_parquet(prompt_rows(CORPUS, "support-assistant", "train"), job / "data/train.parquet")
    write_parquet(prompt_rows(CORPUS[:3], "support-assistant", "val"), job / "data/val.parquet")
    facts = target.JobFacts(
        train_prompts=300,
        val_prompts=32,
        max_prompt_tokens=prompt_tokens(job / "model", CORPUS, False),
        start="a tiny test model",
        reward_model_sha256="0" * 64,
    )
    for name, data in target.render(plan, checked, facts, {"dir": "test"}).items():
        (job / name).write_bytes(data)
    for name in target.EXECUTABLE:
        (job / name).chmod(0o755)
    expected = {
        key: value.replace(target.JOB_DIR, str(job)) if isinstance(value, str) else value
        for key, (value, _) in target.job_keys(checked, facts).items()
    }
    return job, expected


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return build_job(tmp_path_factory.mktemp("verl"))


@pytest.fixture(scope="module")
def scaled_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """FSDP with CPU offload, LoRA and bf16: the compute keys the export maps."""
    return build_job(tmp_path_factory.mktemp("verl-scaled"), SCALED)


def test_installed_verl_is_the_pinned_version() -> None:
    from importlib.metadata import version

    assert version("verl") == target.VERL_VERSION


def test_overrides_compose_and_pass_verls_checks(job: tuple[Path, dict[str, Any]]) -> None:
    folder, expected = job
    cfg = compose(launch_args(folder))
    assert check_config(cfg, expected, target.VERL_DEFAULTS) == []
    # the settings the issue names, as verl will read them
    assert cfg.algorithm.use_kl_in_reward is True and cfg.algorithm.lam == 0.95
    assert cfg.algorithm.kl_ctrl.type == "adaptive" and cfg.algorithm.kl_ctrl.kl_coef == 0.05
    assert cfg.actor_rollout_ref.rollout.response_length == 48
    assert cfg.critic.ppo_epochs == 2 and cfg.critic.ppo_mini_batch_size == 16


def test_scaled_job_composes_and_every_key_has_its_default_quoted(
    job: tuple[Path, dict[str, Any]], scaled_job: tuple[Path, dict[str, Any]]
) -> None:
    folder, expected = scaled_job
    cfg = compose(launch_args(folder))
    assert check_config(cfg, expected, target.VERL_DEFAULTS) == []
    assert cfg.actor_rollout_ref.model.lora_rank == 8
    assert cfg.critic.fsdp.optimizer_offload is True
    assert cfg.actor_rollout_ref.rollout.name == cfg.reward.reward_model.rollout.name == "sglang"
    for keys in (expected, job[1]):
        assert set(keys) <= set(target.VERL_DEFAULTS), "add verl's default to VERL_DEFAULTS"


def test_both_launch_scripts_pass_the_same_overrides(job: tuple[Path, dict[str, Any]]) -> None:
    folder, _ = job
    assert launch_args(folder, "run_ray_cluster.sh") == launch_args(folder)


def test_the_defaults_mapping_md_quotes_are_verls() -> None:
    assert default_problems(target.VERL_DEFAULTS) == []


@pytest.mark.parametrize(
    "bad",
    [
        "algorithm.lamda=0.9",  # no such key
        "actor_rollout_ref.actor.ppo_mini_batch_size=7",  # does not divide the batch
        "algorithm.kl_ctrl.kl_coef=much",  # not a number
        "actor_rollout_ref.actor.loss_agg_mode=token-average",  # a value verl refuses
    ],
)
def test_the_check_catches_what_verl_would_refuse(
    job: tuple[Path, dict[str, Any]], bad: str
) -> None:
    folder, expected = job
    key, _, raw = bad.partition("=")
    with pytest.raises(Exception):  # noqa: B017 - Hydra, OmegaConf or verl's own error
        cfg = compose([*launch_args(folder), bad])
        problems = check_config(cfg, {**expected, key: raw}, target.VERL_DEFAULTS)
        assert not problems, problems


def test_chat_template_reproduces_our_prompt_format(job: tuple[Path, dict[str, Any]]) -> None:
    from transformers import AutoTokenizer

    folder, _ = job
    prompt, response = "  My parcel is late.  ", " Sorry! Track it here. "
    policy = AutoTokenizer.from_pretrained(folder / "model")
    chat = [{"role": "user", "content": prompt}]
    assert policy.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == (
        format_prompt(prompt)
    )
    reward = AutoTokenizer.from_pretrained(folder / "reward_model")
    scored = reward.apply_chat_template(
        [*chat, {"role": "assistant", "content": response}], tokenize=False
    )
    assert scored == full_text(prompt, response) + reward.eos_token


def test_verls_dataset_reads_our_prompts_as_our_prompt_format(
    job: tuple[Path, dict[str, Any]],
) -> None:
    """verl's own RLHFDataset reads the parquet; its chat, through the job's tokenizer, is
    exactly the prompt our PPO samples from, and fits max_prompt_length."""
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    folder, _ = job
    cfg = compose(launch_args(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    dataset = RLHFDataset(cfg.data.train_files, tokenizer, cfg.data)
    assert len(dataset) == len(CORPUS)
    for i, text in enumerate(CORPUS[:6]):
        chat = list(dataset[i]["raw_prompt"])
        rendered = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert rendered == format_prompt(text)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        assert len(ids) <= cfg.data.max_prompt_length
