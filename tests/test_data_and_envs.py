import pytest

from rayrl.data import ExampleSampler, allocate
from rayrl.envs import make_env


def test_sampler_is_deterministic_and_resumable():
    a = ExampleSampler(10, seed=3)
    first = a.take(7)
    state = a.state_dict()
    rest = a.take(8)  # crosses into epoch 1
    b = ExampleSampler(10, seed=3)
    b.load_state_dict(state)
    assert b.take(8) == rest
    assert sorted(first + rest[:3]) == list(range(10))  # one epoch is a permutation


def test_allocate_is_proportional_and_exact():
    assert allocate(10, [1, 1]) == [5, 5]
    assert allocate(10, [3, 1]) == [8, 2]
    assert sum(allocate(7, [1, 1, 1])) == 7


def test_arithmetic_splits_are_disjoint_and_deterministic():
    env = make_env("arithmetic", {"digits": 2, "eval_size": 100})
    train, held_out = env.examples("train"), env.examples("eval")
    assert len(held_out) == 100 and len(train) == 9900
    assert not {e.id for e in train} & {e.id for e in held_out}
    assert [e.id for e in make_env("arithmetic", {"digits": 2, "eval_size": 100}).examples("eval")] == [
        e.id for e in held_out
    ]
    ex = held_out[0]
    a, b = map(int, ex.prompt.rstrip("=").split("+"))
    assert ex.answer == str(a + b)
    assert env.score(ex, ex.answer) == 1.0 and env.score(ex, ex.answer + "1") == 0.0


def test_digit_partial_credit():
    from rayrl.envs.arithmetic import digit_credit

    assert digit_credit("46", "46") == 1.0
    assert digit_credit("47", "46") == 0.5
    assert digit_credit("4", "46") == 0.5
    assert digit_credit("4612", "46") == 0.5
    assert digit_credit("", "46") == 0.0
    env = make_env("arithmetic", {"reward": "digits"})
    ex = env.examples("eval")[0]
    assert env.score(ex, ex.answer) == 1.0


def test_unknown_env_id_names_it_and_suggests():
    with pytest.raises(ValueError, match="unknown environment id 'arithmetc'.*Did you mean 'arithmetic'"):
        make_env("arithmetc")


def test_bad_env_argument_names_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown argument.*'digit'.*accepts: digits, eval_size, train_size, seed, reward"):
        make_env("arithmetic", {"digit": 2})


def test_single_turn_environments_with_answers_can_be_warm_started():
    from rayrl.envs import make_env
    from rayrl.errors import WarmstartError
    from rayrl.models.warmstart import check_warm_start

    for env_id, args in [("arithmetic", {}), ("sat", {"num_train": 50, "num_eval": 10}),
                         ("openspiel", {"game_list": ["tic_tac_toe"], "num_tasks_per_case": 30})]:
        check_warm_start(make_env(env_id, args), env_id)  # no error
    frozen = make_env("gymnasium:FrozenLake-v1", {"num_train": 5, "num_eval": 2})
    with pytest.raises(WarmstartError, match="is a multi-turn environment.*warmstart.enabled = false"):
        check_warm_start(frozen, "gymnasium:FrozenLake-v1")
