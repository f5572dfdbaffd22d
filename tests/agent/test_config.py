"""GRPOConfig validation, field docs, dict/YAML round trips and the generated command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from deepgrpo_agent.config import GRPOConfig, field_docs, from_dict, own_fields, to_dict
from deepgrpo_agent.config_cli import build_parser, dump_yaml, parse_config


@dataclass(kw_only=True)
class ToyDeepConfig(GRPOConfig):
    """A subclass with only its own fields, as DeepGRPOConfig will be."""

    branches: int = 8
    """Continuations sampled from each pivot (K)."""
    pivot_mode: Literal["sentence", "tokens"] = "sentence"
    """How responses are cut into candidate pivots."""
    group_size: int = 4
    """Root responses per prompt (redocumented by the subclass)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.branches < 2:
            raise ValueError(f"Expected `branches` >= 2, got {self.branches}.")


def test_defaults():
    cfg = GRPOConfig()
    assert (cfg.group_size, cfg.prompts_per_step, cfg.learning_rate) == (8, 4, 1e-6)
    assert cfg.advantage_scale == "none" and cfg.loss_aggregation == "token-mean"
    assert cfg.adam_betas == (0.9, 0.99) and cfg.dual_clip is None and cfg.env_kwargs == {}
    assert GRPOConfig().env_kwargs is not cfg.env_kwargs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"group_size": 1}, "Expected `group_size` >= 2, got 1. Advantages compare"),
        ({"prompts_per_step": 0}, "Expected `prompts_per_step` >= 1, got 0"),
        ({"top_p": 0.0}, r"Expected `top_p` in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"Expected `top_p` in \(0, 1\], got 1.5"),
        ({"temperature": 0.0}, "Expected `temperature` > 0 and finite, got 0.0"),
        ({"clip_eps_low": 1.0}, r"Expected `clip_eps_low` in \[0, 1\), got 1.0"),
        ({"clip_eps_high": -0.1}, r"Expected `clip_eps_high` in \[0, 1\)"),
        ({"dual_clip": 1.0}, "Expected `dual_clip` > 1 or None, got 1.0. .*use 3.0"),
        ({"micro_batch_size": 0}, "Expected `micro_batch_size` >= 1, got 0"),
        ({"total_steps": 0}, "Expected `total_steps` >= 1, got 0"),
        ({"kl_coef": -1e-4}, "Expected `kl_coef` >= 0"),
        ({"max_new_tokens": 0}, "Expected `max_new_tokens` >= 1"),
        ({"adam_betas": (0.9, 1.0)}, "Expected `adam_betas` in"),
        ({"device": "gpu"}, "Expected `device` like"),
        ({"eval_problems": 0}, "Expected `eval_problems` >= 1 when evaluating"),
        ({"pass_k": -1}, "Expected `pass_k` >= 0"),
        (
            {"advantage_scale": "grup"},
            "Expected `advantage_scale` to be one of 'group', 'batch', 'none', got 'grup'.*did you mean 'group'",
        ),
        ({"loss_aggregation": "token_mean"}, "did you mean 'token-mean'"),
        ({"group_size": "8"}, r"Expected `group_size` to be an int, got '8' \(str\)"),
        ({"group_size": 8.0}, "Expected `group_size` to be an int"),
        ({"tensorboard": 1}, "Expected `tensorboard` to be true or false"),
        ({"adam_betas": (0.9,)}, "1 values instead of 2"),
    ],
)
def test_validation_messages(overrides, message):
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**overrides)


def test_valid_edge_values_and_lossless_conversions():
    cfg = GRPOConfig(
        learning_rate=1,
        adam_betas=[0.9, 0.95],  # type: ignore[arg-type]
        output_dir=Path("runs/x"),  # type: ignore[arg-type]
        dual_clip=3,
        eval_every=0,
        eval_problems=0,
        pass_k=0,
        device="cuda:1",
        top_p=1.0,
    )
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1.0
    assert cfg.adam_betas == (0.9, 0.95) and cfg.output_dir == "runs/x" and cfg.dual_clip == 3.0
    kwargs = {"prompt": "plain"}
    assert GRPOConfig(env_kwargs=kwargs).env_kwargs is not kwargs  # the config owns its mapping


def test_subclass_gets_parent_validation_and_adds_its_own():
    with pytest.raises(ValueError, match="group_size"):
        ToyDeepConfig(group_size=1)
    with pytest.raises(ValueError, match="branches"):
        ToyDeepConfig(branches=1)
    with pytest.raises(ValueError, match="pivot_mode"):
        ToyDeepConfig(pivot_mode="words")  # type: ignore[arg-type]
    cfg = ToyDeepConfig(branches=4, learning_rate=2e-6)
    assert (cfg.branches, cfg.group_size, cfg.learning_rate) == (4, 4, 2e-6)


def test_every_field_has_a_docstring():
    docs = field_docs(GRPOConfig)
    assert list(docs) == [f.name for f in dataclasses.fields(GRPOConfig)]
    assert [name for name, doc in docs.items() if not doc.strip()] == []
    assert docs["group_size"].startswith("Responses sampled per prompt (G)")


def test_field_docs_and_groups_follow_inheritance():
    docs = field_docs(ToyDeepConfig)
    assert all(docs.values())
    assert docs["branches"] == "Continuations sampled from each pivot (K)."
    assert docs["group_size"] == "Root responses per prompt (redocumented by the subclass)."
    assert docs["kl_coef"] == field_docs(GRPOConfig)["kl_coef"]
    groups = own_fields(ToyDeepConfig)
    assert list(groups) == [GRPOConfig, ToyDeepConfig]
    assert groups[ToyDeepConfig] == ["branches", "pivot_mode"] and "group_size" in groups[GRPOConfig]


def test_dict_round_trip_and_yaml_style_values():
    cfg = GRPOConfig(group_size=16, adam_betas=(0.9, 0.95), env_kwargs={"prompt": "plain"}, run_name="a")
    d = to_dict(cfg)
    assert d["adam_betas"] == [0.9, 0.95]  # plain values only
    assert from_dict(GRPOConfig, d) == cfg
    # YAML 1.1 reads 1e-6 and 1e3 as strings; from_dict parses them.
    loaded = from_dict(GRPOConfig, yaml.safe_load("learning_rate: 1e-6\ntotal_steps: 1e3\ndual_clip: 3"))
    assert loaded.learning_rate == 1e-6 and loaded.total_steps == 1000 and loaded.dual_clip == 3.0


def test_unknown_keys_suggest_close_matches():
    with pytest.raises(ValueError, match=r"GRPOConfig has no field .grup_size.\. Did you mean .group_size."):
        from_dict(GRPOConfig, {"grup_size": 4})
    with pytest.raises(ValueError, match="Did you mean 'learning_rate'"):
        from_dict(GRPOConfig, {"learning-rate": 1e-5})


def test_help_shows_docstrings_defaults_and_choices():
    text = build_parser(ToyDeepConfig, prog="deepgrpo train").format_help()
    assert "Responses sampled" not in text  # the subclass's doc wins
    assert "--group-size INT" in text and "Root responses per prompt" in text
    assert "Coefficient β of the k3 KL penalty" in text and "(default: 0.0)" in text
    assert "{group,batch,none}" in text and "--no-tensorboard" in text
    assert "--adam-betas FLOAT FLOAT" in text and "--dual-clip FLOAT|none" in text
    assert "ToyDeepConfig options" in text and "--pivot-mode {sentence,tokens}" in text


def test_flags_of_every_kind():
    cfg = parse_config(
        GRPOConfig,
        [
            "--group-size",
            "4",
            "--learning-rate",
            "1e-5",
            "--adam-betas",
            "0.8",
            "0.9",
            "--no-tensorboard",
            "--dual-clip",
            "3",
            "--env-kwargs",
            '{"prompt": "plain"}',
            "--advantage-scale",
            "group",
            "--run-name",
            "x",
            "--eval-max-new-tokens",
            "none",
        ],
    )
    assert (cfg.group_size, cfg.learning_rate, cfg.adam_betas) == (4, 1e-5, (0.8, 0.9))
    assert cfg.tensorboard is False and cfg.dual_clip == 3.0 and cfg.env_kwargs == {"prompt": "plain"}
    assert cfg.advantage_scale == "group" and cfg.run_name == "x" and cfg.eval_max_new_tokens is None
    assert parse_config(GRPOConfig, []) == GRPOConfig()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--group-size", "two"], "Expected `group_size` to be an int, got 'two'"),
        (["--group-size", "1"], "Expected `group_size` >= 2"),
        (["--advantage-scale", "grp"], "to be one of 'group', 'batch', 'none', got 'grp'"),
        (["--grup-size", "4"], "unrecognized arguments"),
        (["--env-kwargs", "{bad"], "not valid JSON"),
    ],
)
def test_bad_flags_exit_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse_config(GRPOConfig, argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_yaml_file_then_flags_override_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("group_size: 4\nlearning_rate: 1e-5\nadam_betas: [0.8, 0.9]\nwandb: true\n")
    cfg = parse_config(GRPOConfig, ["--config", str(path), "--group-size", "16", "--no-wandb"])
    assert cfg.group_size == 16 and cfg.wandb is False  # flags beat the file
    assert cfg.learning_rate == 1e-5 and cfg.adam_betas == (0.8, 0.9)  # the file beats defaults
    assert cfg.total_steps == GRPOConfig().total_steps  # defaults fill the rest


def test_yaml_unknown_or_bad_keys_exit_naming_the_file(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("grup_size: 4\n")
    with pytest.raises(SystemExit):
        parse_config(GRPOConfig, ["--config", str(path)])
    err = capsys.readouterr().err
    assert "no field 'grup_size' (in --config" in err and "Did you mean 'group_size'" in err
    path.write_text("- 1\n- 2\n")
    with pytest.raises(SystemExit):
        parse_config(GRPOConfig, ["--config", str(path)])
    assert "to hold a mapping" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(GRPOConfig, ["--config", str(tmp_path / "missing.yaml")])
    assert "Cannot read --config" in capsys.readouterr().err


def test_dump_yaml_round_trips(tmp_path):
    cfg = ToyDeepConfig(
        branches=3,
        pivot_mode="tokens",
        adam_betas=(0.5, 0.6),
        dual_clip=2.5,
        run_name="r",
        env_kwargs={"prompt": "plain", "nested": {"a": [1, 2]}},
        learning_rate=3e-7,
    )
    path = tmp_path / "cfg.yaml"
    dump_yaml(cfg, path)
    text = path.read_text()
    assert "# Continuations sampled from each pivot (K).\nbranches: 3\n" in text  # docs as comments
    assert parse_config(ToyDeepConfig, ["--config", str(path)]) == cfg
    assert parse_config(ToyDeepConfig, ["--config", str(path), "--branches", "5"]).branches == 5


def test_dump_yaml_refuses_objects(tmp_path):
    cfg = GRPOConfig(env_kwargs={"verifier": object()})
    with pytest.raises(ValueError, match="`env_kwargs` to YAML"):
        dump_yaml(cfg, tmp_path / "cfg.yaml")


def test_ray_rollout_workers_refuse_the_vllm_engine():
    with pytest.raises(ValueError, match=r"Expected `rollout_workers` 0 with engine='vllm'.*got 2"):
        GRPOConfig(engine="vllm", rollout_workers=2)
    GRPOConfig(engine="vllm", rollout_workers=0)
    GRPOConfig(engine="hf", rollout_workers=2)
