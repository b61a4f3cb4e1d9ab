"""Seed 004's program tasks (affine:abd, affine:ded) and the sandbox their answers run in: known right and
wrong answers, the seed's file format, and hostile programs that must score 0, be counted and harm nothing."""

from __future__ import annotations

import json
import os
import time

import pytest

from rayrl.envs.registry import make_env
from rayrl.envs.sandbox import Limits, run_program
from rayrl.errors import EnvError

FAST = {"num_train": 200, "num_eval": 50, "cpu_s": 1.0, "wall_s": 2.0}


@pytest.fixture(scope="module")
def abd():
    return make_env("affine:abd", FAST)


@pytest.fixture(scope="module")
def ded():
    return make_env("affine:ded", FAST)


# ---- rewards on known answers -----------------------------------------------------------------------
def test_reference_answers_score_1_and_wrong_ones_0(abd, ded):
    for env in (abd, ded):
        train, evals = env.examples("train"), env.examples("eval")
        assert len(train) == 200 and len(evals) == 50 and not {e.id for e in train} & {e.id for e in evals}
        for example in train[:12]:
            assert env.score(example, env.sft_completion(example))["reward"] == 1.0, example
    example = next(e for e in abd.examples("train") if "x*" in e.info["program"])
    assert abd.score(example, str(int(example.answer) + 1))["reward"] == 0.0  # another input, another output
    assert abd.score(example, "")["parsed"] == 0.0
    example = ded.examples("train")[0]
    assert ded.score(example, "print('no')")["reward"] == 0.0
    assert ded.score(example, "x = (")["sandbox_error"] == 1.0


def test_any_input_that_prints_the_output_is_right(abd):
    example = next(e for e in abd.examples("train") if e.info["program"].startswith("a,b=map"))
    total = int(example.info["output"])
    assert abd.score(example, f"{total} 0")["reward"] == 1.0 and abd.score(example, f"0 {total}")["reward"] == 1.0


def test_partial_reward_and_the_affine_format():
    env = make_env("affine:ded", {**FAST, "reward": "partial", "format": "affine"})
    example = next(e for e in env.examples("train") if e.prompt.startswith("read n, print n*"))
    assert "```python" in env.sft_completion(example) and "STDIN" in example.prompt
    k = int(example.prompt.split("*")[1].split()[0])
    first = example.info["tests"][0]["input"].strip()
    wrong_elsewhere = f"n=int(input())\nprint(n*{k} if n=={first} else -1)"  # passes the first test only
    score = env.score(example, f"Here:\n```python\n{wrong_elsewhere}\n```")
    assert score["tests_passed"] == pytest.approx(1 / 3) and score["reward"] == pytest.approx(1 / 3)
    abd = make_env("affine:abd", {**FAST, "format": "affine"})
    example = abd.examples("train")[0]
    assert abd.score(example, f"thinking... <INPUT>\n{example.answer}\n</INPUT>")["reward"] == 1.0


def test_rows_in_the_seeds_format(tmp_path):
    rows = [{"program": "a=int(input()); b=int(input()); print(a+b)", "inputs": "2\n3\n", "output": "5\n"}] * 1
    rows += [{"program": f"print(int(input())*{k})", "inputs": "2\n", "output": f"{2 * k}\n"} for k in range(2, 40)]
    (tmp_path / "abd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = make_env("affine:abd", {"path": str(tmp_path / "abd.jsonl"), "num_eval": 10})
    both = env.examples("train") + env.examples("eval")
    assert len(both) == len(rows)
    first = next(e for e in both if "a+b" in e.info["program"])
    assert env.score(first, "1\n4")["reward"] == 1.0 and env.score(first, "1\n5")["reward"] == 0.0
    cases = {"test_cases": [{"type": "stdin_stdout", "input": "3\n", "output": "9\n"},
                            {"type": "stdin_stdout", "input": ["4"], "output": ["16"]}]}
    ded_rows = [{"prompt": f"print the square ({i})", "verification_info": json.dumps(cases)} for i in range(20)]
    ded_rows.append({"prompt": "literal", "test_cases": repr(cases)})
    (tmp_path / "ded.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ded_rows))
    ded = make_env("affine:ded", {"path": str(tmp_path / "ded.jsonl"), "num_eval": 5})
    example = (ded.examples("train") + ded.examples("eval"))[0]
    assert ded.score(example, "n=int(input())\nprint(n*n)")["reward"] == 1.0
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(EnvError, match=r"bad.jsonl row 1: no 'prompt' column"):
        make_env("affine:ded", {"path": str(tmp_path / "bad.jsonl")})


# ---- hostile programs ---------------------------------------------------------------------------------
def hostile(ded, program: str) -> dict[str, float]:
    return ded.score(ded.examples("train")[0], program)


def test_an_infinite_loop_is_stopped_and_counted(ded):
    start = time.perf_counter()
    score = hostile(ded, "while True:\n    pass")
    assert score["reward"] == 0.0 and score["sandbox_timeout"] == 1.0 and time.perf_counter() - start < 3
    score = hostile(ded, "import time\ntime.sleep(60)")  # no CPU used: the wall clock stops it
    assert score["sandbox_timeout"] == 1.0 and time.perf_counter() - start < 6


def test_a_fork_bomb_forks_nothing(ded):
    score = hostile(ded, "import os\nwhile True:\n    os.fork()")
    assert score["reward"] == 0.0 and score["sandbox_blocked"] == 1.0
    for program in ("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])", "import os\nos.system('ls')",
                    "import multiprocessing\nmultiprocessing.Process(target=print).start()"):
        assert hostile(ded, program)["sandbox_blocked"] == 1.0, program


def test_a_huge_allocation_fails_inside_the_sandbox(ded):
    for program in ("x = bytearray(10**11)", "x = [1] * (10**10)", "s = 'a' * (10**10)"):
        score = hostile(ded, program)
        assert score["reward"] == 0.0 and score["sandbox_memory"] == 1.0, program


def test_the_users_files_environment_and_network_stay_out_of_reach(ded, tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    monkeypatch.setenv("RAYRL_TEST_API_KEY", "sk-do-not-leak")
    reads = [f"print(open({str(secret)!r}).read())", f"import pathlib\nprint(pathlib.Path({str(secret)!r}).read_text())",
             f"import os\nprint(os.listdir({str(tmp_path)!r}))", "print(open('/etc/passwd').read())",
             f"import os\nfd = os.open({str(secret)!r}, os.O_RDONLY)\nprint(os.read(fd, 100))",
             "import socket\nsocket.create_connection(('pypi.org', 443))", "__import__('_socket')",
             "import ctypes\nctypes.CDLL(None).system(b'id')", f"open({str(tmp_path / 'planted')!r}, 'w').write('x')",
             "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"]
    for program in reads:
        run = run_program(program, [""], Limits(cpu_s=1, wall_s=2))
        assert run.status == "blocked" and "TOP-SECRET" not in run.tests[0].stdout, (program, run)
        assert hostile(ded, program)["sandbox_blocked"] == 1.0
    assert not (tmp_path / "planted").exists() and os.getpid()  # and this process is alive
    run = run_program("import os\nprint(dict(os.environ))", [""])
    assert "sk-do-not-leak" not in run.tests[0].stdout and "RAYRL_TEST_API_KEY" not in run.tests[0].stdout


def test_an_output_flood_is_cut(ded):
    assert hostile(ded, "while True:\n    print('x' * 1000)")["sandbox_output_limit"] == 1.0


def test_a_program_catching_the_refusal_still_counts_and_reads_nothing():
    run = run_program("try:\n    print(open('/etc/passwd').read())\nexcept Exception as e:\n    print('no')", [""])
    assert run.status == "blocked" and run.tests[0].stdout == "no\n"
