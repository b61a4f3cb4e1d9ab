"""The lineage record: config diffs, the atomic champion pointer, torn lines, and `rayrl lineage`."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from rayrl.cli import main
from rayrl.evaluation.gate import Decision, GateConfig, decide
from rayrl.tuning.lineage import Lineage, config_diff

BASE_CONFIG = {"optim": {"lr": 1e-4, "betas": (0.9, 0.999)}, "env": [{"id": "arithmetic", "args": {"digits": 2}}]}


def test_config_diff_over_nested_dicts_and_lists():
    new = {"optim": {"lr": 2e-4, "betas": [0.9, 0.95]}, "env": [{"id": "arithmetic", "args": {"digits": 3}}],
           "seed": 1}
    assert config_diff(BASE_CONFIG, new) == {
        "env.0.args.digits": [2, 3],
        "optim.betas.1": [0.999, 0.95],
        "optim.lr": [1e-4, 2e-4],
        "seed": [None, 1],
    }
    assert config_diff(BASE_CONFIG, BASE_CONFIG) == {}
    assert config_diff({"env": [1]}, {"env": [1, 2]}) == {"env": [[1], [1, 2]]}  # lengths differ: whole list
    assert config_diff({"a": {"b": 1}}, {}) == {"a.b": [1, None]}


def test_start_writes_the_initial_record_and_an_atomic_pointer(tmp_path):
    lineage = Lineage(tmp_path / "tune")
    assert lineage.champion() is None and lineage.records() == [] and not lineage.exists()
    pointer = lineage.start("ckpt/base", name="base", metrics={"arithmetic": 0.41}, config=BASE_CONFIG)
    on_disk = json.loads((tmp_path / "tune" / "champion").read_text())
    assert on_disk == pointer == lineage.champion()
    assert on_disk["name"] == "base" and on_disk["checkpoint"] == "ckpt/base" and on_disk["iteration"] == 0
    assert on_disk["metrics"] == {"arithmetic": 0.41} and on_disk["config"]["optim"]["betas"] == [0.9, 0.999]
    assert on_disk["since"].endswith("+00:00")
    assert sorted(p.name for p in (tmp_path / "tune").iterdir()) == ["champion", "lineage.jsonl"]  # no temp left
    (record,) = lineage.records()
    assert record["decision"] == "initial" and record["candidate"] == "base" and record["parent"] is None
    assert lineage.next_iteration() == 1
    assert lineage.start("ckpt/base", name="base") == pointer  # idempotent
    with pytest.raises(ValueError, match="already has a champion"):
        lineage.start("ckpt/other")


def test_set_champion_replaces_the_pointer(tmp_path):
    lineage = Lineage(tmp_path)
    lineage.set_champion("a", "ckpt/a", 1, {"arithmetic": 0.5})
    lineage.set_champion("b", tmp_path / "ckpt" / "b", 2, {"arithmetic": np.float64(0.6)})
    pointer = json.loads((tmp_path / "champion").read_text())
    assert pointer["name"] == "b" and pointer["checkpoint"] == str(tmp_path / "ckpt" / "b")
    assert pointer["iteration"] == 2 and pointer["metrics"] == {"arithmetic": 0.6}
    assert not list(tmp_path.glob(".champion*"))


def _iteration(lineage: Lineage, gain: float):
    champion = {"arithmetic": np.zeros(100)}
    candidates = {"t1": {"arithmetic": np.full(100, gain)}, "t2": {"arithmetic": np.zeros(100)}}
    return decide(champion, candidates, GateConfig(bootstrap_resamples=500), parent=lineage.champion()["name"])


def test_record_appends_every_decision_and_moves_the_pointer_on_adoption(tmp_path):
    lineage = Lineage(tmp_path)
    lineage.start("ckpt/base", name="base", config=BASE_CONFIG)
    configs = {"t1": {**BASE_CONFIG, "optim": {"lr": 3e-4, "betas": (0.9, 0.999)}}, "t2": BASE_CONFIG}
    pointer = lineage.record(_iteration(lineage, 0.25), 1, {"t1": "ckpt/t1", "t2": "ckpt/t2"}, configs)
    assert pointer["name"] == "t1" and pointer["checkpoint"] == "ckpt/t1" and pointer["iteration"] == 1
    assert pointer["metrics"] == {"arithmetic": 0.25} and pointer["config"]["optim"]["lr"] == 3e-4
    assert lineage.champion() == pointer
    initial, adopted, rejected = lineage.records()
    assert (adopted["decision"], rejected["decision"]) == ("adopted", "rejected")
    assert adopted["parent"] == "base" and adopted["candidate"] == "t1" and adopted["checkpoint"] == "ckpt/t1"
    assert adopted["config_diff"] == {"optim.lr": [1e-4, 3e-4]} and rejected["config_diff"] == {}
    assert adopted["metrics"]["arithmetic"] == {"champion": 0.0, "candidate": 0.25, "delta": 0.25, "n": 100}
    assert adopted["p_value"] == 1 / 501 and adopted["alpha"] == 0.025 and adopted["test"] == "permutation"
    assert adopted["reason"].startswith("adopted: +0.25") and rejected["reason"].startswith("rejected: p = 1")
    assert adopted["statistic"] == "inf"  # every difference equal: non-finite floats are stored as strings
    assert "config" in adopted and "config" not in rejected
    # a rejected-only iteration leaves the champion where it was
    assert lineage.record(_iteration(lineage, 0.0), 2, {"t1": "ckpt/t1b", "t2": "ckpt/t2b"}) is None
    assert lineage.champion()["name"] == "t1" and lineage.next_iteration() == 3


def test_record_needs_a_champion_and_refuses_two_adoptions(tmp_path):
    lineage = Lineage(tmp_path)
    adopted = Decision("a", "base", True, "adopted", 0.001, 0.05, 0.1, 3.0, "bootstrap", {})
    with pytest.raises(ValueError, match="start"):
        lineage.record([adopted], 1, {"a": "ckpt/a"})
    lineage.start("ckpt/base", name="base")
    twin = Decision("b", "base", True, "adopted", 0.001, 0.05, 0.1, 3.0, "bootstrap", {})
    with pytest.raises(ValueError, match="two candidates adopted"):
        lineage.record([adopted, twin], 1, {"a": "ckpt/a", "b": "ckpt/b"})


def test_torn_last_line_is_skipped_and_the_next_append_starts_a_new_line(tmp_path, caplog):
    lineage = Lineage(tmp_path)
    lineage.start("ckpt/base", name="base")
    with open(lineage.path, "a") as f:
        f.write('{"iteration": 1, "candidate": "t1", "decis')  # a crash in the middle of a write
    with caplog.at_level(logging.WARNING, logger="rayrl.tuning.lineage"):
        assert [r["candidate"] for r in lineage.records()] == ["base"]
    assert "line 2 is torn" in caplog.text
    lineage.append({"iteration": 1, "candidate": "t2", "decision": "rejected", "reason": "rejected: test"})
    assert [r["candidate"] for r in lineage.records()] == ["base", "t2"]
    assert lineage.champion()["name"] == "base"


def test_champion_pointer_is_repaired_after_a_crash_between_record_and_pointer(tmp_path, caplog):
    lineage = Lineage(tmp_path)
    lineage.start("ckpt/base", name="base")
    lineage.append({"iteration": 1, "parent": "base", "candidate": "t1", "checkpoint": "ckpt/t1",
                    "decision": "adopted", "reason": "adopted: +0.1", "config": {"seed": 3},
                    "metrics": {"arithmetic": {"champion": 0.4, "candidate": 0.5, "delta": 0.1, "n": 10}}})
    stale = lineage.champion_path.read_text()
    assert lineage.champion(repair=False)["name"] == "t1"
    assert lineage.champion_path.read_text() == stale  # reading only (as `rayrl lineage` does)
    with caplog.at_level(logging.WARNING, logger="rayrl.tuning.lineage"):
        pointer = lineage.champion()
    assert "repairing" in caplog.text
    assert pointer["name"] == "t1" and pointer["iteration"] == 1 and pointer["metrics"] == {"arithmetic": 0.5}
    assert pointer["config"] == {"seed": 3}
    assert json.loads(lineage.champion_path.read_text()) == pointer


def test_rayrl_lineage_prints_the_history_table(tmp_path, capsys):
    lineage = Lineage(tmp_path)
    lineage.start("ckpt/base", name="base", metrics={"arithmetic": 0.0}, config=BASE_CONFIG)
    configs = {"t1": {**BASE_CONFIG, "seed": 5}, "t2": BASE_CONFIG}
    lineage.record(_iteration(lineage, 0.25), 1, {"t1": "ckpt/t1", "t2": "ckpt/t2"}, configs)
    assert main(["lineage", str(tmp_path), "--diff"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["iter", "candidate", "decision", "gain", "CI", "p-value", "alpha", "look", "samples",
                              "reason"]
    assert out[2].split()[:3] == ["0", "base", "initial"]
    assert out[3].split()[:4] == ["1", "t1", "adopted", "+0.2500"]
    assert out[3].split()[6:10] == ["0.001996", "0.025", "1/1", "-"]  # [low, high] takes two words
    low, high = (float(x) for x in out[3].split("[")[1].split("]")[0].split(","))
    assert low <= 0.25 <= high  # every difference is 0.25 here: a zero-width interval
    assert out[4].strip() == "seed: None -> 5"
    assert out[5].split()[:3] == ["1", "t2", "rejected"] and out[5].endswith("(0.05 / 2 candidates)")
    assert out[0].index("reason") == out[3].index("adopted: +0.25")  # columns align
    assert "champion: t1 since iteration 1" in out[-2] and out[-2].endswith("ckpt/t1")
    assert out[-1].strip() == "arithmetic 0.2500"

    assert main(["lineage", str(tmp_path / "lineage.jsonl"), "--json"]) == 0
    assert [json.loads(line)["candidate"] for line in capsys.readouterr().out.splitlines()] == ["base", "t1", "t2"]


def test_rayrl_lineage_errors_on_a_folder_without_lineage(tmp_path, capsys):
    assert main(["lineage", str(tmp_path)]) == 2
    assert f"{tmp_path} has no lineage.jsonl" in capsys.readouterr().err
    assert main(["lineage", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
