"""OpenSpiel adapter: real pyspiel games, real tiny model; no mocks."""

import pytest

pytest.importorskip("pyspiel")

from rayrl.envs import Example, make_env  # noqa: E402
from rayrl.envs.openspiel_env import OpenSpielEnv  # noqa: E402

# x: 0 1, o: 3 4, x to move: 2 wins at once.
X_WINS_NEXT = [0, 3, 1, 4]
# x o x / x o o / o x . with x to move: 8 is the only move and draws.
DRAW_NEXT = [0, 1, 2, 4, 3, 5, 7, 6]


def task(env: OpenSpielEnv, history: list[int], case: str = "tic_tac_toe") -> Example:
    """A hand-made task of ``case`` after ``history``."""
    state = env.games[case].new_initial_state()
    for a in history:
        state.apply_action(a)
    return Example(id="hand", prompt="", info={"case": case, "history": history, "player": state.current_player(),
                                               "seed": 7})


def test_splits_are_disjoint_deterministic_and_interleaved():
    args = {"cases": ["tic_tac_toe", "connect_four"], "num_tasks_per_case": 30, "eval_tasks_per_case": 10}
    env = make_env("openspiel", args)
    train, held_out = env.examples("train"), env.examples("eval")
    assert len(train) == 60 and len(held_out) == 20
    assert not {e.id for e in train} & {e.id for e in held_out}
    assert not {e.info["seed"] for e in train} & {e.info["seed"] for e in held_out}
    assert [e.info["case"] for e in held_out[:4]] == ["tic_tac_toe", "connect_four"] * 2  # a prefix covers all cases
    again = make_env("openspiel", args)
    assert again.examples("train") == train and again.examples("eval") == held_out
    # same task id, same state: the prompt shows the state rebuilt from the stored history
    ex = train[17]
    state = env.state(ex)
    assert ex.prompt.split("\n")[1:-2] == str(state).strip("\n").split("\n")
    assert len({e.prompt for e in train}) > 10  # random openings make different tasks


def test_prompt_shows_observation_and_legal_moves_compactly():
    env = make_env("openspiel", {"cases": ["tic_tac_toe"], "max_random_steps": 9})
    for ex in env.examples("train"):
        state = env.state(ex)
        assert not state.is_terminal() and not state.is_chance_node()
        assert len(ex.prompt) <= 180, ex.prompt
        lines = ex.prompt.split("\n")
        assert lines[0] == f"tic_tac_toe player {state.current_player()}" and lines[-1] == "move:"
        assert lines[-2] == "legal: " + " ".join(
            f"{a}={state.action_to_string(state.current_player(), a)}" for a in state.legal_actions()
        )
    short = make_env("openspiel", {"show_action_strings": False, "max_random_steps": 0}).examples("eval")[0]
    assert short.prompt == "tic_tac_toe player 0\n...\n...\n...\nlegal: 0 1 2 3 4 5 6 7 8\nmove:"


def test_imperfect_information_games_show_the_information_state_and_skip_chance():
    env = make_env("openspiel", {"cases": ["kuhn_poker"], "num_tasks_per_case": 20})
    for ex in env.examples("train"):
        state = env.state(ex)
        assert not state.is_chance_node()
        player = state.current_player()
        assert state.information_state_string(player) in ex.prompt
        assert ex.prompt.endswith("\nlegal: 0=Pass 1=Bet\nmove:")
    # the cards dealt differ between tasks, so the views differ
    assert len({ex.prompt for ex in env.examples("train")}) > 1


def test_parsing_exact_string_or_id_else_zero():
    env = make_env("openspiel", {})
    ex = task(env, X_WINS_NEXT)
    legal = {"reward": 1.0, "legal": 1.0, "parsed": 1.0}
    assert env.score(ex, "x(0,2)") == legal
    assert env.score(ex, "2") == legal
    assert env.score(ex, "  2 \nsomething else") == legal  # first line, stripped
    assert env.score(ex, "\n 8") == legal
    assert env.score(ex, "0") == {"reward": 0.0, "legal": 0.0, "parsed": 1.0}  # occupied
    assert env.score(ex, "x(0,0)") == {"reward": 0.0, "legal": 0.0, "parsed": 1.0}  # an action string, illegal now
    assert env.score(ex, "42") == {"reward": 0.0, "legal": 0.0, "parsed": 1.0}
    for garbage in ("", "x(0,2) please", "two", "2.0", "o(0,2)"):
        assert env.score(ex, garbage) == {"reward": 0.0, "legal": 0.0, "parsed": 0.0}, garbage


def test_outcome_reward_plays_out_and_scales_the_return():
    env = make_env("openspiel", {"reward_mode": "outcome"})
    assert env.score(task(env, X_WINS_NEXT), "2")["reward"] == 1.0  # wins at once
    assert env.score(task(env, DRAW_NEXT), "8") == {"reward": 0.5, "legal": 1.0, "parsed": 1.0}  # (0 + 1) / 2
    assert env.score(task(env, X_WINS_NEXT), "3")["reward"] == 0.0  # illegal
    opening = task(env, [])
    rewards = [env.score(opening, str(a))["reward"] for a in range(9)]
    assert set(rewards) <= {0.0, 0.5, 1.0}
    assert rewards == [env.score(opening, str(a))["reward"] for a in range(9)]  # seeded playouts
    averaged = make_env("openspiel", {"reward_mode": "outcome", "outcome_playouts": 8})
    values = [averaged.score(task(averaged, []), str(a))["reward"] for a in range(9)]
    assert any(v not in (0.0, 0.5, 1.0) for v in values)  # a mean over 8 random games
    legal_only = make_env("openspiel", {"reward_mode": "legal"})
    assert legal_only.score(task(legal_only, DRAW_NEXT), "8")["reward"] == 1.0


def test_cases_game_list_and_game_types():
    pairs = make_env("openspiel", {"game_list": ["hex", "hex", "tic_tac_toe"],
                                   "game_configs": [{"board_size": 3}, {"board_size": 4}, {}],
                                   "num_tasks_per_case": 2})
    assert list(pairs.games) == ["hex(board_size=3)", "hex(board_size=4)", "tic_tac_toe"]
    assert len(pairs.examples("train")) == 6
    hexes = make_env("openspiel", {"cases": ["hex(board_size=3)", "hex(board_size=4)", "tic_tac_toe"],
                                   "game_types": ["hex"], "num_tasks_per_case": 2})
    assert list(hexes.games) == ["hex(board_size=3)", "hex(board_size=4)"]
    assert {e.info["case"] for e in hexes.examples("eval")} == set(hexes.games)
    one = make_env("openspiel", {"cases": ["hex(board_size=3)", "tic_tac_toe"], "game_types": ["hex(board_size=3)"]})
    assert list(one.games) == ["hex(board_size=3)"]
    ex = pairs.examples("train")[0]
    assert ex.prompt.startswith("hex(board_size=3) player ")


@pytest.mark.parametrize(
    "args, message",
    [
        ({"cases": ["tictactoe"]}, "unknown game 'tictactoe'.*did you mean 'tic_tac_toe'"),
        ({"cases": ["hex(board_sz=5)"]}, "cannot load 'hex\\(board_sz=5\\)'.*Unknown parameter 'board_sz'"),
        ({"reward_mode": "win"}, "reward_mode must be one of legal, outcome, got 'win'"),
        ({"game_list": ["hex", "tic_tac_toe"], "game_configs": [{"board_size": 5}]},
         "game_configs has 1 entries but game_list has 2"),
        ({"cases": ["tic_tac_toe"], "game_types": ["chess"]}, "game_types 'chess' match no case.*tic_tac_toe"),
        ({"cases": ["tic_tac_toe"], "game_list": ["hex"]}, "either cases or game_list"),
        ({"cases": ["goofspiel"]}, "simultaneous-move game"),
        ({"num_tasks_per_case": 0}, "num_tasks_per_case must be an integer >= 1"),
        ({"cases": "tic_tac_toe"}, "cases must be a list, got 'tic_tac_toe' \\(write \\['tic_tac_toe'\\] for one\\)"),
        ({"rewardmode": "legal"}, "unknown argument.*'rewardmode'.*accepts: cases, game_list"),
    ],
)
def test_errors_name_the_environment_and_the_fix(args, message):
    with pytest.raises(ValueError, match="environment 'openspiel'.*" + message):
        make_env("openspiel", args)


def test_tiny_model_episodes_score_like_the_environment(local_generator):
    from rayrl.envs.base import EpisodeRequest
    from rayrl.envs.episodes import play_turns

    env = make_env("openspiel", {"show_action_strings": False, "eval_tasks_per_case": 24})
    generator = local_generator(seq_len=80, max_tokens=3, temperature=1.0, seed=0)
    examples = env.examples("eval")
    results = play_turns(
        [EpisodeRequest(env, ex, generator.tokenizer(ex.prompt).input_ids) for ex in examples], generator
    )
    for ex, result in zip(examples, results):
        assert result.turns == 1 and result.length <= 80 and all(m == 1 for m in result.completion_mask)
        score = env.score(ex, result.completion)
        assert result.reward == score["reward"]
        assert result.metrics == {"legal": score["legal"], "parsed": score["parsed"]}
