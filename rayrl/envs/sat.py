"""Built-in verifiable task: random k-SAT near the satisfiability threshold.

Formats (one token per character for the builtin tiny model):

- prompt: ``"sat 5\\nabC aDe BcE ...\\n"``: the number of variables, then the clauses separated by
  spaces. Variable i is the i-th lowercase letter (``a`` = x1, ``b`` = x2, ...); lowercase is the
  positive literal, uppercase the negated one. ``abC`` is the clause (x1 or x2 or not x3). Literals
  are sorted by variable, clauses by their variables then signs, so a formula has one canonical
  prompt (and id). The default (5 variables, 21 clauses of 3) is 90 characters.
- answer: a bit string, one character per variable in order, ``1`` = true: ``"10110"``. Parsing is
  lenient: the ``0``/``1`` characters of the completion's first non-blank line assign the variables in
  order. Metric ``parsed`` is 1 when there are exactly ``n_vars`` of them; ``exact`` reward needs that.

Letters, not DIMACS numbers (``1 -2 3``), keep a literal to one token and the default prompt under
100 characters; the price is ``n_vars <= 26``.
"""

from __future__ import annotations

import hashlib
import math
import string

import numpy as np

from rayrl.envs.base import Environment, Example, Split

Clause = tuple[int, ...]  # signed 1-based variable indices, sorted by variable: (1, -2, 3)
Formula = tuple[Clause, ...]  # clauses in canonical order (see random_formulas)

LETTERS = string.ascii_lowercase
MAX_VARS = len(LETTERS)  # one letter per variable
MAX_BRUTE_FORCE_VARS = 16  # satisfiable_only = false: best assignment of an unsatisfiable formula by brute force
MAX_BITMASK_VARS = 12  # up to here satisfiability is brute force over all 2**n_vars assignments, above by DPLL
UNPARSED_CREDIT = 0.5  # partial reward of an answer with the wrong number of bits: this share of its clause credit
DRAW_BATCH = 1024  # formulas drawn at once; fixed, so the eval split does not depend on num_train
MAX_DRAWS_PER_EXAMPLE = 50  # give up once fewer than 1 in 50 formulas drawn was kept...
MIN_DRAWS_BEFORE_GIVING_UP = 8 * DRAW_BATCH  # ...after at least this many draws


class SatEnv(Environment):
    """Random k-CNF formulas of ``n_vars`` variables and ``round(clause_ratio * n_vars)`` clauses.

    Each clause has ``k`` distinct variables drawn uniformly, each negated with probability 1/2 (the
    standard random k-SAT model; 3-SAT is hardest near 4.2 clauses per variable). With
    ``satisfiable_only`` (the default) only satisfiable formulas are kept, so every example has a
    satisfying assignment (its answer and ``sft_completion``). Satisfiability is decided exactly: by
    brute force over all assignments up to 12 variables (the first satisfying one in binary order),
    by DPLL above (fast enough near the threshold up to the 26-variable limit). Without
    ``satisfiable_only`` (up to 16 variables) an unsatisfiable formula's answer is an assignment
    satisfying the most clauses, and ``info["satisfiable"]`` says which kind an example is.
    ``reward = "exact"``: 1.0 iff the answer parses and satisfies every clause. ``reward = "partial"``:
    the share of clauses satisfied by the bits given (the first ``n_vars``; a variable without a bit
    satisfies nothing), halved unless there are exactly ``n_vars`` bits. A random model that emits one
    ``0``/``1`` already earns some reward, and the reward rises towards 1 as the format (the right
    number of bits, then the end) and the assignment improve. Metric ``satisfied_fraction`` is that
    share, unhalved, whatever the mode.

    Formulas are drawn with ``seed`` and deduplicated by canonical form; the first ``num_eval``
    distinct ones are the eval split, the next ``num_train`` the train split (so eval does not depend
    on ``num_train``). Example ids hash the formula: the same id always means the same formula.
    """

    id = "sat"

    def __init__(
        self,
        n_vars: int = 5,
        k: int = 3,
        clause_ratio: float = 4.2,
        num_train: int = 10_000,
        num_eval: int = 500,
        seed: int = 0,
        reward: str = "exact",
        satisfiable_only: bool = True,
    ):
        n_clauses = round(clause_ratio * n_vars)
        check_args(n_vars, k, n_clauses, num_train, num_eval, reward, satisfiable_only)
        self.n_vars, self.k, self.n_clauses, self.reward = n_vars, k, n_clauses, reward
        self.satisfiable_only = satisfiable_only
        self._texts: dict[Clause, str] = {}
        rng = np.random.default_rng(seed)
        solver = BitmaskSolver(n_vars) if n_vars <= MAX_BITMASK_VARS else None
        wanted, seen, kept, draws = num_eval + num_train, set(), [], 0
        while len(kept) < wanted:
            if draws >= MIN_DRAWS_BEFORE_GIVING_UP and len(kept) * MAX_DRAWS_PER_EXAMPLE < draws:
                which = "satisfiable " if satisfiable_only else ""
                raise ValueError(
                    f"sat: only {len(kept)} of {draws} formulas drawn were new and {which}(too few to "
                    f"reach num_eval + num_train = {wanted}); lower them, or change n_vars or clause_ratio"
                )
            for formula in random_formulas(rng, n_vars, k, n_clauses, DRAW_BATCH):
                draws += 1
                if formula in seen or len(kept) == wanted:
                    continue
                seen.add(formula)
                assignment = solver.solve(formula) if solver else solve(formula, n_vars)
                if assignment is None and satisfiable_only:
                    continue
                kept.append(self._example(formula, assignment))
        self._eval, self._train = kept[:num_eval], kept[num_eval:]

    def _example(self, formula: Formula, assignment: list[bool] | None) -> Example:
        prompt = f"sat {self.n_vars}\n{render(formula, self._texts)}\n"
        satisfiable = assignment is not None
        if assignment is None:
            assignment = best_assignment(formula, self.n_vars)
        answer = "".join("1" if v else "0" for v in assignment)
        digest = hashlib.sha1(prompt.encode()).hexdigest()[:12]
        info = {"n_vars": self.n_vars, "clauses": [list(c) for c in formula], "satisfiable": satisfiable}
        return Example(id=f"sat{self.n_vars}-{digest}", prompt=prompt, answer=answer, info=info)

    def examples(self, split: Split) -> list[Example]:
        return list({"train": self._train, "eval": self._eval}[split])

    def score(self, example: Example, completion: str) -> dict[str, float]:
        n_vars, clauses = example.info["n_vars"], example.info["clauses"]
        bits = parse_bits(completion)
        parsed, given = len(bits) == n_vars, bits[:n_vars]
        satisfied = sum(
            any(abs(lit) <= len(given) and given[abs(lit) - 1] == (lit > 0) for lit in c) for c in clauses
        ) / len(clauses)
        if self.reward == "partial":
            reward = satisfied if parsed else UNPARSED_CREDIT * satisfied
        else:
            reward = float(parsed and satisfied == 1.0)
        return {"reward": reward, "satisfied_fraction": satisfied, "parsed": float(parsed)}


def check_args(
    n_vars: int, k: int, n_clauses: int, num_train: int, num_eval: int, reward: str, satisfiable_only: bool
) -> None:
    """ValueError naming the first argument that cannot work."""
    if not 1 <= n_vars <= MAX_VARS:
        raise ValueError(f"sat: n_vars must be between 1 and {MAX_VARS} (one letter per variable), got {n_vars}")
    if not 1 <= k <= n_vars:
        raise ValueError(f"sat: k (literals per clause) must be between 1 and n_vars = {n_vars}, got {k}")
    if n_clauses < 1:
        raise ValueError(f"sat: clause_ratio * n_vars must round to at least 1 clause, got {n_clauses}")
    if reward not in ("exact", "partial"):
        raise ValueError(f"sat: reward must be 'exact' or 'partial', got '{reward}'")
    if num_train < 1 or num_eval < 0:
        raise ValueError(f"sat: num_train must be >= 1 and num_eval >= 0, got {num_train} and {num_eval}")
    if not satisfiable_only and n_vars > MAX_BRUTE_FORCE_VARS:
        raise ValueError(
            f"sat: satisfiable_only = false needs n_vars <= {MAX_BRUTE_FORCE_VARS} (the answer of an "
            f"unsatisfiable formula is found by brute force), got {n_vars}"
        )
    distinct_clauses = math.comb(n_vars, k) * 2**k
    distinct_formulas = math.comb(distinct_clauses + n_clauses - 1, n_clauses)  # multisets of clauses
    if distinct_formulas < num_train + num_eval:
        raise ValueError(
            f"sat: only {distinct_formulas} distinct formulas exist with n_vars = {n_vars}, k = {k} and "
            f"{n_clauses} clauses, fewer than num_eval + num_train = {num_train + num_eval}"
        )


def random_formulas(rng: np.random.Generator, n_vars: int, k: int, n_clauses: int, count: int) -> list[Formula]:
    """``count`` formulas of ``n_clauses`` clauses, each of ``k`` distinct variables with random signs.

    Clauses come in canonical order: by variables, then by signs (``abc`` < ``abC`` < ``Abc`` < ``abd``).
    """
    variables = np.sort(np.argsort(rng.random((count, n_clauses, n_vars)), axis=2)[:, :, :k], axis=2) + 1
    negated = rng.integers(0, 2, (count, n_clauses, k))
    keys = [negated[:, :, j] for j in reversed(range(k))] + [variables[:, :, j] for j in reversed(range(k))]
    order = np.lexsort(keys, axis=1)[:, :, None]  # the last key sorts first
    literals = np.take_along_axis(np.where(negated == 1, -variables, variables), order, axis=1)
    return [tuple(map(tuple, clauses)) for clauses in literals.tolist()]


def render(formula: Formula, cache: dict[Clause, str] | None = None) -> str:
    """``((1, 2, -3), (-2, 4, 5))`` -> ``"abC Bde"``; ``cache`` keeps each clause's text."""
    cache = {} if cache is None else cache
    texts = []
    for clause in formula:
        if clause not in cache:
            cache[clause] = "".join(LETTERS[lit - 1] if lit > 0 else LETTERS[-lit - 1].upper() for lit in clause)
        texts.append(cache[clause])
    return " ".join(texts)


def parse_bits(completion: str) -> list[bool]:
    """The ``0``/``1`` characters of the first non-blank line, as values: ``" 1x0\n1"`` -> [True, False]."""
    line = completion.strip().split("\n", 1)[0]
    return [c == "1" for c in line if c in "01"]


class BitmaskSolver:
    """Brute force over all ``2**n_vars`` assignments, as bits of one Python int per clause (cached).

    Bit r of a clause's mask is set when assignment r satisfies it (bit i of r = variable i+1); a
    formula is satisfiable iff the AND of its clauses' masks is not 0, and its lowest set bit is the
    first satisfying assignment in binary order.
    """

    def __init__(self, n_vars: int):
        self.n_vars, self.masks = n_vars, {}
        self.values = (np.arange(2**n_vars)[:, None] >> np.arange(n_vars)) & 1 == 1  # (2**n, n)

    def mask(self, clause: Clause) -> int:
        if clause not in self.masks:
            satisfied = np.zeros(len(self.values), dtype=bool)
            for lit in clause:
                satisfied |= self.values[:, abs(lit) - 1] == (lit > 0)
            self.masks[clause] = int.from_bytes(np.packbits(satisfied, bitorder="little").tobytes(), "little")
        return self.masks[clause]

    def solve(self, formula: Formula) -> list[bool] | None:
        models = -1  # every assignment
        for clause in formula:
            models &= self.mask(clause)
            if not models:
                return None
        first = (models & -models).bit_length() - 1
        return [bool(first >> i & 1) for i in range(self.n_vars)]


def solve(formula: Formula, n_vars: int) -> list[bool] | None:
    """A satisfying assignment (unassigned variables false) by DPLL with unit propagation, or None."""
    model = _dpll([list(c) for c in formula], {})
    return None if model is None else [model.get(v, False) for v in range(1, n_vars + 1)]


def _dpll(clauses: list[list[int]], assignment: dict[int, bool]) -> dict[int, bool] | None:
    while True:  # simplify by the assignment, assigning unit clauses until none is left
        remaining, unit = [], None
        for clause in clauses:
            open_literals = []
            for lit in clause:
                value = assignment.get(abs(lit))
                if value is None:
                    open_literals.append(lit)
                elif value == (lit > 0):
                    break
            else:
                if not open_literals:
                    return None  # every literal false: conflict
                if len(open_literals) == 1:
                    unit = open_literals[0]
                remaining.append(open_literals)
        if unit is None:
            break
        assignment[abs(unit)] = unit > 0
        clauses = remaining
    if not remaining:
        return assignment
    lit = remaining[0][0]
    for value in (lit > 0, lit < 0):  # try the literal true first
        model = _dpll(remaining, {**assignment, abs(lit): value})
        if model is not None:
            return model
    return None


def best_assignment(formula: Formula, n_vars: int) -> list[bool]:
    """The first assignment (in binary order) satisfying the most clauses; 2**n_vars rows, n_vars <= 16."""
    rows = (np.arange(2**n_vars)[:, None] >> np.arange(n_vars)) & 1 == 1  # row r: bit i = variable i+1
    variables = np.array([[abs(lit) - 1 for lit in c] for c in formula])
    positive = np.array([[lit > 0 for lit in c] for c in formula])
    satisfied = (rows[:, variables] == positive).any(axis=2).sum(axis=1)
    return rows[int(np.argmax(satisfied))].tolist()
