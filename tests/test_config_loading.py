"""Config loading: TOML + command-line overrides -> Config, and the error messages users see."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import get_args, get_origin

import pytest
from pydantic import BaseModel

from rayrl.config import Config
from rayrl.config.located import HINT
from rayrl.config.loading import config_reference_markdown, load_config, parse_overrides
from rayrl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error(path, overrides=None) -> str:
    """The message of the ConfigError that loading must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert message.endswith("\n" + HINT) or message.startswith("experiment file not found")
    for dump_marker in ("validation error for", "errors.pydantic.dev", "[type=", "input_value="):
        assert dump_marker not in message
    return message


# --------------------------------------------------------------------------- loading


def test_defaults_only():
    assert load_config(None) == Config()
    assert load_config(None, []) == Config()
    assert load_config(None, {}) == Config()


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_experiments_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_file_values_and_untouched_defaults(tmp_path):
    path = write(tmp_path, """
        name = "exp"
        wandb.project = "proj"

        [optim]
        lr = 3e-4

        [[env]]
        id = "arithmetic"
        [env.args]
        digits = 2

        [[env]]
        id = "other"
        weight = 2.5
    """)
    cfg = load_config(path)
    assert cfg.name == "exp"
    assert cfg.optim.lr == 3e-4 and cfg.wandb.project == "proj"
    assert cfg.optim.max_norm == Config().optim.max_norm
    assert [(e.id, e.args, e.weight) for e in cfg.env] == [("arithmetic", {"digits": 2}, 1.0), ("other", {}, 2.5)]


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.toml"
    message = error(missing)
    assert message.startswith(f"experiment file not found: {missing}")


def test_missing_file_suggests_a_close_name(tmp_path):
    write(tmp_path, "seed = 1\n", name="default.toml")
    assert error(tmp_path / "defualt.toml").endswith(f"; did you mean {tmp_path / 'default.toml'}?")


# --------------------------------------------------------------------------- overrides


def test_parse_overrides_both_forms():
    args = ["--optim.lr", "1e-4", "--max_steps=5", "--seed", "-3", "--name=a=b"]
    assert parse_overrides(args) == {"optim.lr": "1e-4", "max_steps": "5", "seed": "-3", "name": "a=b"}
    assert parse_overrides([]) == {}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max_steps"], "command line: --max_steps needs a value, e.g. --max_steps VALUE"),
        (["--max_steps", "--seed", "1"], "command line: --max_steps needs a value"),
        (["stray"], "command line: unexpected argument 'stray'; overrides look like --section.key value"),
    ],
)
def test_parse_overrides_errors(args, expected):
    with pytest.raises(ConfigError) as info:
        parse_overrides(args)
    assert str(info.value).startswith(expected)
    assert str(info.value).endswith(HINT)


def test_override_value_types():
    cfg = load_config(None, [
        "--max_steps", "5",
        "--optim.lr", "1e-4",
        "--log.progress", "false",
        "--optim.betas", "[0.8, 0.95]",
        "--name", '"quoted"',
        "--model.name", "Qwen/Qwen3-0.6B",
        "--wandb.project", "2024",  # a string field keeps the text, not the int
        "--ckpt.resume_step", "none",
        "--sampling.temperature", "0",
    ])
    assert cfg.max_steps == 5 and type(cfg.max_steps) is int
    assert cfg.optim.lr == 1e-4 and type(cfg.optim.lr) is float
    assert cfg.log.progress is False
    assert cfg.optim.betas == (0.8, 0.95)
    assert cfg.name == "quoted"
    assert cfg.model.name == "Qwen/Qwen3-0.6B"
    assert cfg.wandb.project == "2024"
    assert cfg.ckpt.resume_step is None
    assert cfg.sampling.temperature == 0.0


def test_overrides_as_dict_and_precedence_over_file(tmp_path):
    path = write(tmp_path, """
        max_steps = 10
        [optim]
        lr = 0.5
    """)
    cfg = load_config(path, {"optim.lr": "2e-3", "output_dir": "runs/here"})
    assert cfg.optim.lr == 2e-3
    assert cfg.max_steps == 10
    assert cfg.output_dir == "runs/here"


def test_override_indexes_env_list(tmp_path):
    path = write(tmp_path, """
        [[env]]
        id = "arithmetic"
        args = { digits = 2, eval_size = 100 }

        [[env]]
        id = "second"
    """)
    cfg = load_config(path, ["--env.0.args.digits", "3", "--env.1.weight", "0.5"])
    assert cfg.env[0].args == {"digits": 3, "eval_size": 100}
    assert (cfg.env[1].id, cfg.env[1].weight, cfg.env[1].args) == ("second", 0.5, {})


def test_override_indexes_default_env_list():
    cfg = load_config(None, ["--env.0.args.digits", "3"])
    assert [(e.id, e.args) for e in cfg.env] == [(Config().env[0].id, {"digits": 3})]


def test_override_env_index_out_of_range():
    message = error(None, ["--env.1.id", "other"])
    assert message.splitlines()[0] == "command line: 'env.1': no entry 1 in 'env', which has 1 entry (index 0 to 0)"


def test_override_whole_env_list():
    cfg = load_config(None, ["--env", '[{id = "a"}, {id = "b", weight = 3}]'])
    assert [(e.id, e.weight) for e in cfg.env] == [("a", 1.0), ("b", 3.0)]


# --------------------------------------------------------------------------- TOML syntax errors


def test_syntax_error_unquoted_string(tmp_path):
    path = write(tmp_path, """
        seed = 1

        [model]
        name = Qwen/Qwen3-0.6B
    """)
    lines = error(path).splitlines()
    assert lines == [
        f"{path}, line 4, column 8: TOML syntax error: Invalid value",
        "    name = Qwen/Qwen3-0.6B",
        "           ^",
        'did you mean: name = "Qwen/Qwen3-0.6B"? (strings need quotes in TOML)',
        HINT,
    ]


def test_syntax_error_python_bool(tmp_path):
    path = write(tmp_path, "[log]\nprogress = True  # show it\n")
    lines = error(path).splitlines()
    assert lines[0] == f"{path}, line 2, column 12: TOML syntax error: Invalid value"
    assert lines[3] == "did you mean: progress = true? (TOML booleans are lowercase)"


def test_syntax_error_without_suggestion(tmp_path):
    path = write(tmp_path, "seed = 1\n[optim\nlr = 1\n")
    message = error(path)
    assert message.startswith(f"{path}, line 2, column 7: TOML syntax error: ")
    assert "    [optim\n          ^\n" in message
    assert "did you mean" not in message


def test_syntax_error_at_end_of_document(tmp_path):
    path = write(tmp_path, 'seed = 1\nname = "unterminated')  # no final newline: "at end of document"
    lines = error(path).splitlines()
    assert lines[0] == f"{path}, line 2, column 21: TOML syntax error: Unterminated string"
    assert lines[1] == '    name = "unterminated'


# --------------------------------------------------------------------------- validation errors


def test_unknown_key_in_section_suggests_closest(tmp_path):
    path = write(tmp_path, """
        # a comment
        seed = 1

        [model]
        name = "builtin:tiny-qwen3"

        [optim]
        max_norm = 1.0
        lrr = 1e-4
    """)
    assert error(path).splitlines() == [f"{path}, line 9: unknown key 'optim.lrr'; did you mean 'optim.lr'?", HINT]


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, """
        name = "x"
        max_step = 5
        [optim]
        lr = 1e-3
    """)
    assert error(path).splitlines()[0] == f"{path}, line 2: unknown key 'max_step'; did you mean 'max_steps'?"


def test_unknown_dotted_key_written_inline(tmp_path):
    path = write(tmp_path, 'seed = 1\nmodel.tiny.hidden_sizee = 64\n')
    assert error(path).splitlines()[0] == (
        f"{path}, line 2: unknown key 'model.tiny.hidden_sizee'; did you mean 'model.tiny.hidden_size'?"
    )


def test_unknown_key_in_second_env_block(tmp_path):
    path = write(tmp_path, """
        [[env]]
        id = "a"
        idd = "same key name, first block"

        [[env]]
        id = "b"
        wieght = 2
    """)
    lines = error(path).splitlines()
    assert lines[:3] == [
        "2 config errors:",
        f"  {path}, line 3: unknown key 'env.0.idd'; did you mean 'env.0.id'?",
        f"  {path}, line 7: unknown key 'env.1.wieght'; did you mean 'env.1.weight'?",
    ]


def test_env_args_accept_any_key(tmp_path):
    path = write(tmp_path, "[[env]]\nid = \"a\"\n[env.args]\nanything_goes = 1\n")
    assert load_config(path).env[0].args == {"anything_goes": 1}


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    path = write(tmp_path, "[sampling]\nzzz = 1\n")
    assert error(path).splitlines()[0] == (
        f"{path}, line 2: unknown key 'sampling.zzz'; valid keys in [sampling]: max_tokens, temperature, top_p"
    )


def test_unknown_key_in_wrong_section_names_where_it_lives(tmp_path):
    path = write(tmp_path, "lr = 1e-4\n")
    assert error(path).splitlines()[0] == f"{path}, line 1: unknown key 'lr'; did you mean 'warmstart.lr', 'optim.lr' or 'sft.lr'?"


def test_unknown_section(tmp_path):
    path = write(tmp_path, "seed = 1\n\n[optimm]\nlr = 1\n")
    assert error(path).splitlines()[0] == f"{path}, line 3: unknown key 'optimm'; did you mean 'optim'?"


def test_unknown_key_from_command_line(tmp_path):
    path = write(tmp_path, "[optim]\nlr = 1e-4\n")
    assert error(path, ["--optim.lrr", "1e-3"]).splitlines() == [
        "command line: unknown key 'optim.lrr'; did you mean 'optim.lr'?",
        HINT,
    ]


def test_wrong_type_in_file(tmp_path):
    path = write(tmp_path, """
        seed = 1
        [optim]
        lr = "abc"
    """)
    assert error(path).splitlines()[0] == f"{path}, line 3: key 'optim.lr' expects a float, got 'abc' (str)"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[model]\ndtype = "fp32"\n',
         "line 2: key 'model.dtype' expects one of 'float32', 'bfloat16', 'float16', got 'fp32' (str)"),
        ("max_steps = 1.5\n", "line 1: key 'max_steps' expects an int, got 1.5 (float)"),
        ("[wandb]\nproject = 5\n", "line 2: key 'wandb.project' expects a string, got 5 (int)"),
        ("[log]\nprogress = 3\n", "line 2: key 'log.progress' expects a bool, got 3 (int)"),
        ("[optim]\nbetas = [0.9]\n", "line 2: key 'optim.betas' expects an array [float, float], got [0.9] (list)"),
        ("optim = 5\n", "line 1: key 'optim' expects a table, got 5 (int)"),
        ("[[env]]\nid = 'sat'\nargs = 3\n", "line 3: key 'env.0.args' expects a table, got 3 (int)"),
    ],
)
def test_wrong_types_name_the_expected_type(tmp_path, toml, expected):
    path = write(tmp_path, toml)
    assert error(path).splitlines()[0] == f"{path}, {expected}"


def test_wrong_type_from_command_line_wins_attribution(tmp_path):
    path = write(tmp_path, "[optim]\nlr = 1e-4\n")
    assert error(path, ["--optim.lr", "abc"]).splitlines()[0] == (
        "command line: key 'optim.lr' expects a float, got 'abc' (str)"
    )


def test_out_of_range_value(tmp_path):
    path = write(tmp_path, "seed = 0\nmax_steps = -3\n")
    assert error(path).splitlines()[0] == (
        f"{path}, line 2: key 'max_steps': Input should be greater than or equal to 0, got -3"
    )


def test_out_of_range_value_from_command_line():
    assert error(None, ["--optim.lr", "0"]).splitlines()[0] == "command line: key 'optim.lr': Input should be greater than 0, got 0"


def test_batch_size_must_divide_into_groups(tmp_path):
    path = write(tmp_path, "batch_size = 250\nrollouts_per_example = 8\n")
    assert error(path).splitlines() == [
        f"{path}: batch_size (250) must be a multiple of rollouts_per_example (8): "
        "each prompt is sampled rollouts_per_example times",
        HINT,
    ]


def test_batch_size_validator_from_command_line():
    assert error(None, ["--batch_size", "10"]).splitlines()[0].startswith(
        "command line: batch_size (10) must be a multiple of rollouts_per_example (8)"
    )


def test_all_errors_collected_in_one_message(tmp_path):
    path = write(tmp_path, """
        max_steps = -1
        [optim]
        lrr = 1
        [sampling]
        top_p = "high"
    """)
    lines = error(path, ["--seed", "x"]).splitlines()
    assert lines[0] == "4 config errors:"
    assert sorted(lines[1:5]) == sorted([
        "  command line: key 'seed' expects an int, got 'x' (str)",
        f"  {path}, line 1: key 'max_steps': Input should be greater than or equal to 0, got -1",
        f"  {path}, line 3: unknown key 'optim.lrr'; did you mean 'optim.lr'?",
        f"  {path}, line 5: key 'sampling.top_p' expects a float, got 'high' (str)",
    ])
    assert lines[5:] == [HINT]


def test_config_error_hides_the_pydantic_exception(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "seed = 'x'\n"))
    assert info.value.__cause__ is None and info.value.__suppress_context__


# --------------------------------------------------------------------------- reference


def test_reference_markdown_lists_every_key():
    text = config_reference_markdown()
    lines = text.strip().splitlines()
    assert lines[0] == "| key | type | default | description |"
    assert lines[1] == "|---|---|---|---|"
    keys = [line.split("|")[1].strip() for line in lines[2:]]
    assert len(keys) == len(set(keys))
    assert "`optim.lr` | float | `0.0001` | AdamW learning rate. |" in text
    assert "| `model.tiny.hidden_size` | int | `128` |" in text
    assert "| `[[env]] id` | string | required | Environment id: a built-in name" in text
    assert "| `[[env]] args` | table | `{}` |" in text
    assert "| `ckpt.keep` | int | `3` |" in text
    assert "| `ckpt.resume_step` | int or None | `None` |" in text
    assert "| `model.dtype` | one of 'float32', 'bfloat16', 'float16' | `\"float32\"` |" in text
    assert "| `optim.betas` | array [float, float] | `[0.9, 0.999]` |" in text
    assert "`model`" not in keys and "`env`" not in keys  # sections are expanded, not listed
    assert len(keys) == _leaf_count(Config)


def _leaf_count(model: type[BaseModel]) -> int:
    """Fields that are not themselves sections (a list of sections counts its item's fields)."""
    count = 0
    for field in model.model_fields.values():
        ann = field.annotation
        item = get_args(ann)[0] if get_origin(ann) is list else ann
        count += _leaf_count(item) if isinstance(item, type) and issubclass(item, BaseModel) else 1
    return count


def test_deepspeed_refuses_what_it_does_not_support(tmp_path):
    from pydantic import ValidationError

    from rayrl.config import Config

    for extra, message in (({"learner": {"workers": 0}}, "needs learner.workers >= 1"),
                           ({"lora": {"enabled": True}}, "LoRA runs on 'fsdp2'"),
                           ({"output_dir": "s3://bucket/run"}, "not a URI")):
        raw = {"learner": {"strategy": "deepspeed", **extra.pop("learner", {})}, **extra}
        with pytest.raises(ValidationError, match=message):
            Config.model_validate(raw)
    assert Config.model_validate({"learner": {"strategy": "deepspeed", "zero_stage": 3}}).learner.zero_stage == 3


def test_an_env_entry_without_id_is_refused_not_trained_as_arithmetic(tmp_path):
    path = write(tmp_path, "max_steps = 3\n\n[[env]]\nargs = { digits = 2 }\n")
    assert error(path).splitlines()[0] == (
        f"{path}, line 3: 'env.0' has no key 'id', which is required: Environment id: a built-in name (arithmetic, "
        "sat, openspiel, affine:abd, ...), gymnasium:<EnvId>, or a verifiers environment. Required in every [[env]] entry."
    )
