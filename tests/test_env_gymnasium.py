"""Gymnasium text adapter: real gymnasium environments, real tiny model; no mocks."""

import pytest

pytest.importorskip("gymnasium")

from rayrl.envs import make_env  # noqa: E402
from rayrl.envs.base import EpisodeRequest  # noqa: E402
from rayrl.envs.episodes import play_turns  # noqa: E402

LAKE = "gymnasium:FrozenLake-v1"
STILL_LAKE = {"make_args": {"is_slippery": False}}
TO_GOAL = ["right", "2", "down", "DOWN", "1", " right \n"]  # 0 -> 1 -> 2 -> 6 -> 10 -> 14 -> 15 on the 4x4 map


def test_splits_are_disjoint_and_deterministic():
    env = make_env(LAKE, {"num_train": 50, "num_eval": 20, "seed": 3})
    train, held_out = env.examples("train"), env.examples("eval")
    assert len(train) == 50 and len(held_out) == 20
    assert not {e.id for e in train} & {e.id for e in held_out}
    assert not {e.info["seed"] for e in train} & {e.info["seed"] for e in held_out}
    assert make_env(LAKE, {"num_train": 50, "num_eval": 20, "seed": 3}).examples("eval") == held_out
    # same example, same random stream: slippery moves land in the same cells
    ex = train[7]
    runs = []
    for _ in range(2):
        episode = env.start(ex)
        runs.append([episode.step(a).observation for a in ("down", "right", "right", "down")])
    assert runs[0] == runs[1]
    # examples differ by seed where the reset is random
    hands = make_env("gymnasium:Blackjack-v1", {"num_train": 30}).examples("train")
    assert len({e.prompt for e in hands}) > 5


def test_prompt_and_observations_are_compact_text():
    env = make_env(LAKE, STILL_LAKE)
    ex = env.examples("train")[0]
    assert ex.prompt == "FrozenLake-v1 actions: 0=left 1=down 2=right 3=up\n@FFF\nFHFH\nFFFH\nHFFG\naction:"
    turn = env.start(ex).step("right")
    assert turn == type(turn)(done=False, observation="\nS@FF\nFHFH\nFFFH\nHFFG\naction:", reward=0.0, metrics={
        "episode_return": 0.0, "invalid_actions": 0.0, "steps": 1.0, "success": 0.0})
    taxi = make_env("gymnasium:Taxi-v4").examples("eval")[0].prompt
    assert taxi.startswith("Taxi-v4 actions: 0=south 1=north 2=east 3=west 4=pickup 5=dropoff\ntaxi ")
    hand = make_env("gymnasium:Blackjack-v1").examples("eval")[0].prompt.split("\n")
    assert hand[0] == "Blackjack-v1 actions: 0=stick 1=hit" and hand[1].startswith("sum ") and hand[2] == "action:"
    import gymnasium as gym

    if "RayrlAnsiLake-v0" not in gym.registry:  # no built-in renderer: the ansi render, colours as brackets
        gym.register("RayrlAnsiLake-v0", entry_point="gymnasium.envs.toy_text.frozen_lake:FrozenLakeEnv")
    ansi = make_env("gymnasium:RayrlAnsiLake-v0")
    assert ansi.examples("eval")[0].prompt == "RayrlAnsiLake-v0 actions: 0 1 2 3\n[S]FFF\nFHFH\nFFFH\nHFFG\naction:"
    cart = make_env("gymnasium:CartPole-v1").examples("eval")[0].prompt.split("\n")  # no renderer: the numbers
    assert cart[0] == "CartPole-v1 actions: 0 1" and len(cart[1].split()) == 4 and "\x1b" not in "".join(cart)


def test_parsing_names_and_ids():
    env = make_env(LAKE, STILL_LAKE)
    assert [env.parse(t) for t in ("left", " Down\n", "RIGHT", "3", "0\nup")] == [0, 1, 2, 3, 0]
    assert [env.parse(t) for t in ("", "4", "-1", "go left", "1.0", "\x00")] == [None] * 6
    custom = make_env(LAKE, {"action_names": ["W", "S", "E", "N"]})
    assert custom.parse("e") == 2 and custom.parse("right") is None
    assert custom.examples("eval")[0].prompt.startswith("FrozenLake-v1 actions: 0=w 1=s 2=e 3=n\n")


def test_reward_is_the_sum_of_step_rewards_and_success_is_reported():
    env = make_env(LAKE, STILL_LAKE)
    episode = env.start(env.examples("train")[0])
    turns = [episode.step(a) for a in TO_GOAL]
    assert [t.done for t in turns] == [False] * 5 + [True]
    assert sum(t.reward for t in turns) == 1.0
    assert turns[-1].metrics == {"episode_return": 1.0, "invalid_actions": 0.0, "steps": 6.0, "success": 1.0}
    hole = env.start(env.examples("train")[0])
    hole.step("down")
    last = hole.step("right")  # into the hole at (1, 1)
    assert last.done and last.reward == 0.0 and last.metrics["success"] == 0.0


def test_invalid_actions_penalty_or_end():
    env = make_env(LAKE, {**STILL_LAKE, "invalid_penalty": -0.5})
    episode = env.start(env.examples("train")[0])
    bad = episode.step("jump")
    assert bad == type(bad)(done=False, observation="\ninvalid\naction:", reward=-0.5,
                            metrics={"episode_return": 0.0, "invalid_actions": 1.0, "steps": 0.0, "success": 0.0})
    turns = [episode.step(a) for a in TO_GOAL]  # the state did not move
    assert turns[-1].done and turns[-1].metrics["invalid_actions"] == 1.0
    assert bad.reward + sum(t.reward for t in turns) == 0.5
    ending = make_env(LAKE, {**STILL_LAKE, "invalid_action": "end", "invalid_penalty": -1})
    turn = ending.start(ending.examples("train")[0]).step("9")
    assert turn.done and turn.reward == -1.0 and turn.observation == ""


@pytest.mark.parametrize(
    "env_id, args, message",
    [
        ("gymnasium:Pendulum-v1", {}, "action space Box.*only Discrete"),
        ("gymnasium:FrozenLak-v1", {}, "cannot make 'FrozenLak-v1'.*Did you mean: `FrozenLake`"),
        (LAKE, {"make_args": {"slippery": True}}, "unexpected keyword argument 'slippery'"),
        (LAKE, {"invalid_action": "skip"}, "invalid_action must be one of penalty, end, got 'skip'"),
        (LAKE, {"action_names": ["a", "b"]}, "action_names has 2 names but 'FrozenLake-v1' has 4 actions"),
        (LAKE, {"max_turn": 3}, "unknown argument.*'max_turn'.*accepts: make_args, num_train"),
        (LAKE, {"num_eval": 0}, "num_eval must be an integer >= 1"),
    ],
)
def test_errors_name_the_environment_and_the_fix(env_id, args, message):
    with pytest.raises(ValueError, match=f"environment '{env_id}'.*{message}"):
        make_env(env_id, args)


def replay(env, example, result, generator):
    """Replay an episode from its model turns; check the env tokens and return the turns."""
    runs, mask = [], result.completion_mask
    start = 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            runs.append((mask[start], result.completion_ids[start:i]))
            start = i
    episode, turns = env.start(example), []
    for k, (is_model, ids) in enumerate(runs):
        if is_model:
            turns.append(episode.step(generator.decode(ids)))
        else:  # the environment's reply, masked out, is exactly the tokenised observation
            assert ids == generator.encode(turns[-1].observation)
            assert runs[k - 1][0] == 1
    return turns


@pytest.mark.parametrize("mode", ["penalty", "end"])
def test_multi_turn_episodes_with_the_tiny_model(local_generator, mode):
    # one-character actions and one-token turns, so that a random model sometimes answers a valid action
    env = make_env(LAKE, {"num_eval": 32, "max_turns": 4, "invalid_action": mode, "action_names": ["l", "d", "r", "u"]})
    generator = local_generator(seq_len=192, max_tokens=1, temperature=1.0, seed=1)
    examples = env.examples("eval")
    results = play_turns([EpisodeRequest(env, ex, generator.tokenizer(ex.prompt).input_ids) for ex in examples],
                         generator)
    for ex, result in zip(examples, results):
        assert result.length <= 192
        turns = replay(env, ex, result, generator)
        assert len(turns) == result.turns and 1 <= result.turns <= 4
        assert result.reward == pytest.approx(sum(t.reward for t in turns))
        assert result.metrics == turns[-1].metrics
        if mode == "end" and turns[-1].metrics["invalid_actions"]:  # the first invalid action ended it
            assert turns[-1].done and turns[-1].reward == -0.1 and turns[-1].metrics["invalid_actions"] == 1
        if not turns[-1].done:
            assert result.finish_reason in ("max_turns", "length")
    assert any(r.turns > 1 for r in results)  # environment replies were appended and the model went on
    assert any(r.metrics["invalid_actions"] > 0 for r in results)
    assert any(r.metrics["steps"] > 0 for r in results)


def test_a_long_episode_stops_within_seq_len(local_generator):
    env = make_env(LAKE, {"num_eval": 4, "max_turns": 50})
    generator = local_generator(seq_len=100, max_tokens=3, temperature=1.0, seed=2)
    examples = env.examples("eval")
    results = play_turns([EpisodeRequest(env, ex, generator.tokenizer(ex.prompt).input_ids) for ex in examples],
                         generator)
    assert all(r.length <= 100 for r in results)
    assert any(r.finish_reason == "length" for r in results)
