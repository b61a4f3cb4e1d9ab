"""Gymnasium environments with discrete actions, played as text over several turns.

An example is a reset seed: train example ``i`` resets with ``seed + i``, eval example ``i`` with
``seed + EVAL_SEED_OFFSET + i``, so the splits never share a seed and an example id always means the
same start (and, for stochastic dynamics, the same random stream given the same actions).

Text: the prompt names the environment and its actions, shows the first observation and ends with an
``action:`` cue. Each model turn answers one action: the first line of the completion, stripped, as an
action name (case-insensitive, from ``ACTION_NAMES`` or ``action_names``) or an action id. The
environment's reply is the next observation and the cue again. Observations are rendered by a
built-in compact renderer for FrozenLake, CliffWalking, Taxi and Blackjack, else by the environment's
``ansi`` render (coloured text shown in brackets) when it has one, else from the observation itself.

Rewards: each turn earns the environment's step reward; the episode's reward is their sum. An
unparsable or out-of-range action earns ``invalid_penalty`` and, with ``invalid_action = "penalty"``,
leaves the state unchanged and says ``invalid`` before the next cue; with ``"end"`` it ends the episode.
Metrics (cumulative, so the last turn's values describe the episode): ``episode_return`` (sum of the
environment's rewards, penalties excluded), ``invalid_actions``, ``steps``, and ``success`` for the
environments whose goal is known (reached the goal / won the hand).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from rayrl.envs.base import Environment, Episode, Example, Split, Turn

EVAL_SEED_OFFSET = 1_000_000  # eval example i resets with seed + EVAL_SEED_OFFSET + i
CUE = "action:"
INVALID_ACTIONS = ("penalty", "end")
ANSI_HIGHLIGHT = re.compile(r"\x1b\[[0-9;]*m([^\x1b]*)\x1b\[0m")  # coloured text: the agent, a goal...
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Action names of well-known environments, by name without the version suffix.
ACTION_NAMES: dict[str, list[str]] = {
    "FrozenLake": ["left", "down", "right", "up"],
    "FrozenLake8x8": ["left", "down", "right", "up"],
    "CliffWalking": ["up", "right", "down", "left"],
    "CliffWalkingSlippery": ["up", "right", "down", "left"],
    "Taxi": ["south", "north", "east", "west", "pickup", "dropoff"],
    "Blackjack": ["stick", "hit"],
}


# ---- renderers: (unwrapped env, observation) -> compact text ---------------------------------------
def render_grid(obs: int, desc, width: int) -> str:
    """Rows of the map with the agent shown as ``@``."""
    rows = [[c.decode() if isinstance(c, bytes) else str(c) for c in row] for row in desc]
    row, col = divmod(int(obs), width)
    rows[row][col] = "@"
    return "\n".join("".join(r) for r in rows)


def render_frozenlake(env, obs) -> str:
    return render_grid(obs, env.desc, env.ncol)


def render_cliffwalking(env, obs) -> str:
    rows, cols = env.shape
    desc = [["." for _ in range(cols)] for _ in range(rows)]
    for c in range(1, cols - 1):
        desc[rows - 1][c] = "C"
    desc[rows - 1][cols - 1] = "G"
    return render_grid(obs, desc, cols)


def render_taxi(env, obs) -> str:
    row, col, passenger, destination = env.decode(int(obs))
    names = "RGYB"
    where = "in taxi" if passenger == 4 else names[passenger]
    return f"taxi {row},{col} passenger {where} dest {names[destination]}"


def render_blackjack(env, obs) -> str:
    total, dealer, ace = obs
    return f"sum {int(total)} dealer {int(dealer)} ace {'yes' if ace else 'no'}"


RENDERERS: dict[str, Callable[[Any, Any], str]] = {
    "FrozenLake": render_frozenlake, "FrozenLake8x8": render_frozenlake,
    "CliffWalking": render_cliffwalking, "CliffWalkingSlippery": render_cliffwalking,
    "Taxi": render_taxi, "Blackjack": render_blackjack,
}

# Success of a finished episode (terminated, last reward), where the goal is known.
SUCCESS: dict[str, Callable[[bool, float], bool]] = {
    "FrozenLake": lambda terminated, reward: terminated and reward > 0,
    "FrozenLake8x8": lambda terminated, reward: terminated and reward > 0,
    "CliffWalking": lambda terminated, reward: terminated,
    "CliffWalkingSlippery": lambda terminated, reward: terminated,
    "Taxi": lambda terminated, reward: terminated,
    "Blackjack": lambda terminated, reward: reward > 0,
}


def base_name(env_id: str) -> str:
    """``FrozenLake-v1`` -> ``FrozenLake`` (namespaces kept: ``tabular/Blackjack-v0`` -> ``tabular/Blackjack``)."""
    return re.sub(r"-v\d+$", "", env_id)


def format_observation(obs: Any) -> str:
    """A short text of an observation with no renderer: ints, tuples, small arrays (2 decimals)."""
    import numpy as np

    if isinstance(obs, (tuple, list)):
        return " ".join(format_observation(o) for o in obs)
    if isinstance(obs, dict):
        return " ".join(f"{k}={format_observation(v)}" for k, v in obs.items())
    array = np.asarray(obs)
    if array.dtype.kind == "f":
        return " ".join(f"{x:.2f}" for x in array.ravel())
    return " ".join(str(x) for x in array.ravel())


class GymnasiumEnv(Environment):
    """A discrete-action gymnasium environment as a multi-turn text task; see the module docstring."""

    def __init__(
        self,
        env_id: str,
        make_args: dict[str, Any] | None = None,
        num_train: int = 1000,
        num_eval: int = 100,
        seed: int = 0,
        max_turns: int = 8,
        invalid_action: str = "penalty",
        invalid_penalty: float = -0.1,
        action_names: list[str] | None = None,
    ):
        import gymnasium as gym

        if invalid_action not in INVALID_ACTIONS:
            raise ValueError(
                f"gymnasium: invalid_action must be one of {', '.join(INVALID_ACTIONS)}, got '{invalid_action}'"
            )
        for name, value in (("num_train", num_train), ("num_eval", num_eval), ("max_turns", max_turns)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"gymnasium: {name} must be an integer >= 1, got {value!r}")
        if num_train > EVAL_SEED_OFFSET:
            raise ValueError(f"gymnasium: num_train must be at most {EVAL_SEED_OFFSET}, got {num_train}")
        if make_args is not None and not isinstance(make_args, dict):
            raise ValueError(f"gymnasium: make_args must be a table of keyword arguments, got {make_args!r}")
        self.env_id, self.id = env_id, f"gymnasium:{env_id}"
        self.make_args = dict(make_args or {})
        self.num = {"train": num_train, "eval": num_eval}
        self.seed, self.max_turns = seed, max_turns
        self.invalid_action, self.invalid_penalty = invalid_action, float(invalid_penalty)
        self.name = base_name(env_id)
        self._renderer = RENDERERS.get(self.name)
        self._success = SUCCESS.get(self.name)
        self._ansi = False
        env = self._make_checked(gym)
        space = env.action_space
        if not isinstance(space, gym.spaces.Discrete):
            raise ValueError(
                f"gymnasium: '{env_id}' has action space {space}; only Discrete action spaces can be answered in text"
            )
        self.action_start, self.num_actions = int(space.start), int(space.n)
        names = action_names if action_names is not None else ACTION_NAMES.get(self.name)
        if names is not None and len(names) != self.num_actions:
            raise ValueError(
                f"gymnasium: action_names has {len(names)} names but '{env_id}' has {self.num_actions} actions"
            )
        self.action_names = [str(n).lower() for n in names] if names else None
        self._prompt_env = env  # reused to render every example's first observation
        self._examples: dict[str, list[Example]] = {}

    def _make_checked(self, gym):
        """The first instance, with gymnasium's errors turned into ones naming this environment."""
        try:
            env = gym.make(self.env_id, **self.make_args)
        except gym.error.Error as e:  # unknown or deprecated ids, with gymnasium's own "did you mean"
            raise ValueError(f"gymnasium: cannot make '{self.env_id}': {e}") from e
        if self._renderer is not None:
            return env
        if "render_mode" in self.make_args:
            self._ansi = self.make_args["render_mode"] == "ansi"
        elif "ansi" in env.metadata.get("render_modes", []):
            self._ansi = True
            env = self.make()
        return env

    def make(self):
        import gymnasium as gym

        extra = {"render_mode": "ansi"} if self._ansi and "render_mode" not in self.make_args else {}
        return gym.make(self.env_id, **self.make_args, **extra)

    # ---- examples ------------------------------------------------------------------------------
    def examples(self, split: Split) -> list[Example]:
        if split not in self._examples:
            base = self.seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
            self._examples[split] = [self._example(split, i, base + i) for i in range(self.num[split])]
        return self._examples[split]

    def _example(self, split: str, index: int, seed: int) -> Example:
        obs, _ = self._prompt_env.reset(seed=seed)
        prompt = f"{self.env_id} actions: {self.actions_text()}\n{self.render(self._prompt_env, obs)}\n{CUE}"
        return Example(id=f"{self.env_id}:{split}:{index}", prompt=prompt, info={"seed": seed})

    def actions_text(self) -> str:
        ids = range(self.action_start, self.action_start + self.num_actions)
        if self.action_names is None:
            return " ".join(str(a) for a in ids)
        return " ".join(f"{a}={n}" for a, n in zip(ids, self.action_names))

    def render(self, env, obs) -> str:
        if self._renderer is not None:
            return self._renderer(env.unwrapped, obs)
        if self._ansi:
            text = ANSI_ESCAPE.sub("", ANSI_HIGHLIGHT.sub(r"[\1]", env.render() or ""))
            return "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))
        return format_observation(obs)

    def parse(self, completion: str) -> int | None:
        """The action of a completion's first line (a name or an id), or None."""
        text = completion.strip().split("\n", 1)[0].strip().lower()
        if self.action_names is not None and text in self.action_names:
            return self.action_start + self.action_names.index(text)
        try:
            action = int(text)
        except ValueError:
            return None
        return action if self.action_start <= action < self.action_start + self.num_actions else None

    def start(self, example: Example) -> Episode:
        return GymnasiumEpisode(self, example)


class GymnasiumEpisode(Episode):
    """One episode: the environment reset with the example's seed, stepped once per model turn."""

    def __init__(self, env: GymnasiumEnv, example: Example):
        self.owner = env
        self.env = env.make()
        self.obs, _ = self.env.reset(seed=example.info["seed"])
        self.episode_return, self.invalid_actions, self.steps = 0.0, 0, 0

    def step(self, completion: str) -> Turn:
        owner = self.owner
        action = owner.parse(completion)
        if action is None:
            self.invalid_actions += 1
            done = owner.invalid_action == "end"
            return Turn(done=done, observation="" if done else f"\ninvalid\n{CUE}",
                        reward=owner.invalid_penalty, metrics=self.metrics(success=False))
        self.obs, reward, terminated, truncated, _ = self.env.step(action)
        reward = float(reward)
        self.episode_return += reward
        self.steps += 1
        done = bool(terminated or truncated)
        success = done and owner._success is not None and owner._success(bool(terminated), reward)
        if done:
            self.env.close()
        observation = "" if done else f"\n{owner.render(self.env, self.obs)}\n{CUE}"
        return Turn(done=done, observation=observation, reward=reward, metrics=self.metrics(success))

    def metrics(self, success: bool) -> dict[str, float]:
        out = {"episode_return": self.episode_return, "invalid_actions": float(self.invalid_actions),
               "steps": float(self.steps)}
        if self.owner._success is not None:
            out["success"] = float(success)
        return out
