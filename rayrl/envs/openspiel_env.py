"""OpenSpiel games as single-move tasks: the model sees a game state and answers one move.

A *case* is a game load string (``"tic_tac_toe"``, ``"hex(board_size=5)"``); every case holds
``num_tasks_per_case`` train and ``eval_tasks_per_case`` eval *tasks*. Task ``i`` of a split is the
state reached from the root by a seeded number (0 to ``max_random_steps``) of uniformly random moves,
chance nodes resolved by sampling their outcomes, never a terminal state. Train task ``i`` uses seed
``seed + i``, eval task ``i`` uses ``seed + EVAL_SEED_OFFSET + i``: the splits never share a task id
or a seed, and the same task id always gives the same state (its history of actions is kept in
``Example.info``). Small games have few distinct states, so different tasks (also across splits) may
show the same position.

The prompt is the game, the player to move, the state as that player sees it (observation string for
perfect-information games, information-state string otherwise), the legal moves and a ``move:`` cue::

    tic_tac_toe player 1
    ...
    .x.
    ...
    legal: 0 1 2 3 5 6 7 8
    move:

(with ``show_action_strings`` the legal list reads ``0=o(0,0) 1=o(0,1) ...``). The answer is the
first line of the completion, stripped: a legal action string, or an action id.

``reward_mode = "legal"``: 1 if the move is legal, else 0. ``reward_mode = "outcome"``: the move is
applied and the game played out by uniformly random players (seeded by the task and the move);
the reward is the mover's return scaled from [min_utility, max_utility] to [0, 1] (for zero-sum
±1 games ``(return + 1) / 2``), averaged over ``outcome_playouts`` playouts; an illegal move earns 0.
Metrics: ``legal`` and ``parsed`` (the answer is an integer or an action string of the game).
"""

from __future__ import annotations

import difflib
import random
from typing import Any

from rayrl.envs.base import Environment, Example, Split

EVAL_SEED_OFFSET = 1_000_000  # eval task i uses seed + EVAL_SEED_OFFSET + i
MAX_STRING_MATCH_ACTIONS = 10_000  # illegal action strings are recognised only in games with fewer actions
REWARD_MODES = ("legal", "outcome")


class OpenSpielEnv(Environment):
    """One legal (or good) move in OpenSpiel game states; see the module docstring for the semantics."""

    id = "openspiel"
    max_turns = 1

    def __init__(
        self,
        cases: list[str] | None = None,
        game_list: list[str] | None = None,
        game_configs: list[dict[str, Any]] | None = None,
        game_types: list[str] | None = None,
        num_tasks_per_case: int = 100,
        eval_tasks_per_case: int = 20,
        max_random_steps: int = 4,
        reward_mode: str = "legal",
        outcome_playouts: int = 1,
        show_action_strings: bool = True,
        seed: int = 0,
    ):
        import pyspiel  # imported here so that `import rayrl.envs` stays cheap

        if reward_mode not in REWARD_MODES:
            raise ValueError(f"openspiel: reward_mode must be one of {', '.join(REWARD_MODES)}, got '{reward_mode}'")
        bounds = {"num_tasks_per_case": (num_tasks_per_case, 1), "eval_tasks_per_case": (eval_tasks_per_case, 1),
                  "max_random_steps": (max_random_steps, 0), "outcome_playouts": (outcome_playouts, 1)}
        for name, (value, low) in bounds.items():
            if not isinstance(value, int) or value < low:
                raise ValueError(f"openspiel: {name} must be an integer >= {low}, got {value!r}")
        if num_tasks_per_case > EVAL_SEED_OFFSET:
            raise ValueError(
                f"openspiel: num_tasks_per_case must be at most {EVAL_SEED_OFFSET}, got {num_tasks_per_case}"
            )
        self.reward_mode, self.outcome_playouts = reward_mode, outcome_playouts
        self.show_action_strings, self.max_random_steps, self.seed = show_action_strings, max_random_steps, seed
        self.num_tasks = {"train": num_tasks_per_case, "eval": eval_tasks_per_case}
        selected = filter_cases(resolve_cases(cases, game_list, game_configs), game_types)
        self.games = {case: load_game(pyspiel, case) for case in selected}
        self._examples: dict[str, list[Example]] = {}

    # ---- tasks ---------------------------------------------------------------------------------
    def examples(self, split: Split) -> list[Example]:
        """Tasks interleaved over cases (task 0 of every case, then task 1, ...), so a prefix covers every case."""
        if split not in self._examples:
            base = self.seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
            self._examples[split] = [
                self._task(case, split, i, base + i) for i in range(self.num_tasks[split]) for case in self.games
            ]
        return self._examples[split]

    def _task(self, case: str, split: str, index: int, seed: int) -> Example:
        game = self.games[case]
        rng = random.Random(seed)
        state = game.new_initial_state()
        resolve_chance(state, rng)
        for _ in range(rng.randint(0, self.max_random_steps)):
            child = state.child(rng.choice(state.legal_actions()))
            resolve_chance(child, rng)
            if child.is_terminal():  # never hand out a finished game: stop one move earlier
                break
            state = child
        if state.is_terminal():
            raise ValueError(f"openspiel: case '{case}' ends before any player moves")
        player = state.current_player()
        legal = state.legal_actions()
        return Example(
            id=f"{case}:{split}:{index}",
            prompt=self._prompt(case, state, player, legal),
            answer=str(legal[0]),  # a legal move, for a supervised warm-start
            info={"case": case, "history": [int(a) for a in state.history()], "player": player, "seed": seed},
        )

    def _prompt(self, case: str, state, player: int, legal: list[int]) -> str:
        if self.show_action_strings:
            moves = " ".join(f"{a}={state.action_to_string(player, a)}" for a in legal)
        else:
            moves = " ".join(str(a) for a in legal)
        return f"{case} player {player}\n{view(state, player)}\nlegal: {moves}\nmove:"

    def state(self, example: Example):
        """The game state of a task, rebuilt from its history."""
        state = self.games[example.info["case"]].new_initial_state()
        for action in example.info["history"]:
            state.apply_action(action)
        return state

    # ---- scoring -------------------------------------------------------------------------------
    def parse(self, state, completion: str) -> tuple[int | None, bool]:
        """(action id or None, parsed): the first line of the completion as an action string or id."""
        text = completion.strip().split("\n", 1)[0].strip()
        player = state.current_player()
        legal = state.legal_actions()
        for action in legal:
            if state.action_to_string(player, action) == text:
                return action, True
        try:
            return int(text), True
        except ValueError:
            pass
        game = state.get_game()
        if text and game.num_distinct_actions() <= MAX_STRING_MATCH_ACTIONS:
            for action in range(game.num_distinct_actions()):
                if action not in legal and _action_string(state, player, action) == text:
                    return action, True
        return None, False

    def score(self, example: Example, completion: str) -> dict[str, float]:
        state = self.state(example)
        action, parsed = self.parse(state, completion)
        legal = action is not None and action in state.legal_actions()
        if not legal:
            reward = 0.0
        elif self.reward_mode == "legal":
            reward = 1.0
        else:
            reward = sum(
                self._playout(state, example.info["player"], action, example.info["seed"], k)
                for k in range(self.outcome_playouts)
            ) / self.outcome_playouts
        return {"reward": reward, "legal": float(legal), "parsed": float(parsed)}

    def _playout(self, state, player: int, action: int, seed: int, k: int) -> float:
        """Scaled return of ``player`` after ``action`` and random play by everyone; seeded by (task, move, k)."""
        rng = random.Random((seed * 1_000_003 + action) * 101 + k)
        state = state.child(action)
        while not state.is_terminal():
            if state.is_chance_node():
                resolve_chance(state, rng)
            else:
                state.apply_action(rng.choice(state.legal_actions()))
        game = state.get_game()
        low, high = game.min_utility(), game.max_utility()
        value = state.returns()[player]
        return (value - low) / (high - low) if high > low else float(value > 0)


# ---- cases ---------------------------------------------------------------------------------------
def resolve_cases(
    cases: list[str] | None, game_list: list[str] | None, game_configs: list[dict[str, Any]] | None
) -> list[str]:
    """Load strings from ``cases`` or from ``game_list`` with ``game_configs`` (parallel lists)."""
    for name, value in (("cases", cases), ("game_list", game_list), ("game_configs", game_configs)):
        if value is not None and not isinstance(value, (list, tuple)):
            raise ValueError(f"openspiel: {name} must be a list, got {value!r} (write [{value!r}] for one)")
    if cases is not None and game_list is not None:
        raise ValueError("openspiel: give either cases or game_list (+ game_configs), not both")
    if game_configs is not None and game_list is None:
        raise ValueError("openspiel: game_configs needs game_list (one config per game)")
    if game_list is not None:
        configs = game_configs if game_configs is not None else [{}] * len(game_list)
        if len(configs) != len(game_list):
            raise ValueError(
                f"openspiel: game_configs has {len(configs)} entries but game_list has {len(game_list)}; "
                "they are parallel lists (one config per game, {} for none)"
            )
        cases = [load_string(name, config) for name, config in zip(game_list, configs)]
    cases = list(cases) if cases is not None else ["tic_tac_toe"]
    if not cases:
        raise ValueError("openspiel: no games given (cases or game_list is empty)")
    duplicates = sorted({c for c in cases if cases.count(c) > 1})
    if duplicates:
        raise ValueError(f"openspiel: case(s) given twice: {', '.join(duplicates)}")
    return cases


def load_string(name: str, config: dict[str, Any] | None) -> str:
    """``hex`` + ``{"board_size": 5}`` -> ``hex(board_size=5)``."""
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"openspiel: game_configs entries must be tables of parameters, got {config!r} for '{name}'")
    if not config:
        return name
    return f"{name}({','.join(f'{k}={v}' for k, v in config.items())})"


def short_name(case: str) -> str:
    return case.split("(", 1)[0].strip()


def filter_cases(cases: list[str], game_types: list[str] | None) -> list[str]:
    """Cases whose short name (``hex`` of ``hex(board_size=5)``) or whole load string is in ``game_types``."""
    if game_types is None:
        return cases
    if not isinstance(game_types, (list, tuple)):
        raise ValueError(f"openspiel: game_types must be a list, got {game_types!r} (write [{game_types!r}] for one)")
    unmatched = [t for t in game_types if not any(t in (c, short_name(c)) for c in cases)]
    if unmatched:
        raise ValueError(
            f"openspiel: game_types {', '.join(repr(t) for t in unmatched)} match no case; the cases are "
            f"{', '.join(cases)}"
        )
    return [c for c in cases if c in game_types or short_name(c) in game_types]


def load_game(pyspiel, case: str):
    """The game of a load string, with errors naming close game names and unsupported game kinds."""
    name = short_name(case)
    names = pyspiel.registered_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else " (see pyspiel.registered_names())"
        raise ValueError(f"openspiel: unknown game '{name}' in case '{case}'{hint}")
    try:
        game = pyspiel.load_game(case)
    except pyspiel.SpielError as e:
        raise ValueError(f"openspiel: cannot load '{case}': {e}") from e
    kind = game.get_type()
    if kind.dynamics != pyspiel.GameType.Dynamics.SEQUENTIAL:
        raise ValueError(f"openspiel: '{case}' is a simultaneous-move game; only sequential games are supported")
    if not (kind.provides_observation_string or kind.provides_information_state_string):
        raise ValueError(f"openspiel: '{case}' provides no observation or information-state string to show")
    return game


# ---- states --------------------------------------------------------------------------------------
def resolve_chance(state, rng: random.Random) -> None:
    """Sample chance outcomes (by their probabilities) until a player is to move or the game ends."""
    while state.is_chance_node():
        outcomes, probs = zip(*state.chance_outcomes())
        state.apply_action(rng.choices(outcomes, weights=probs)[0])


def view(state, player: int) -> str:
    """What ``player`` sees: the observation string in perfect-information games, else the information state."""
    import pyspiel

    kind = state.get_game().get_type()
    perfect = kind.information == pyspiel.GameType.Information.PERFECT_INFORMATION
    if (perfect or not kind.provides_information_state_string) and kind.provides_observation_string:
        text = state.observation_string(player)
    else:
        text = state.information_state_string(player)
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))


def _action_string(state, player: int, action: int) -> str | None:
    try:
        return state.action_to_string(player, action)
    except Exception:  # some games refuse to name actions that make no sense in this state
        return None
