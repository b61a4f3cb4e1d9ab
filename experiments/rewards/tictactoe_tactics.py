"""A custom reward for one tic-tac-toe move (experiments/openspiel_grpo_lora.toml): 0 for an illegal or
unreadable move; where the position holds a tactic (a move that wins now, or one that blocks the opponent's
win next move), 1 for taking it (a win before a block) and 0.25 for any other legal move; elsewhere 1 for
any legal move. Reads the position from the prompt the openspiel environment writes (board rows of x, o
and ., then "legal: ..."), so it needs no game engine."""

LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]


def completing(board: list[str], mark: str) -> set[int]:
    """Empty cells that would complete a line of ``mark``."""
    out = set()
    for line in LINES:
        cells = [board[i] for i in line]
        if cells.count(mark) == 2 and cells.count(".") == 1:
            out.add(line[cells.index(".")])
    return out


def tactics(prompt: str, completion: str, answer: str, info: dict) -> dict:
    lines = prompt.splitlines()
    board = list("".join(lines[1:4]))
    legal = {int(a) for a in lines[4].removeprefix("legal:").split()}
    me = "x" if lines[0].endswith("player 0") else "o"
    text = completion.strip()
    move = int(text[0]) if text[:1].isdigit() else None
    wins, blocks = completing(board, me), completing(board, "o" if me == "x" else "x")
    best = wins or blocks
    if move is None or move not in legal:
        return {"reward": 0.0, "legal": 0.0, "tactic": 0.0}
    if not best:
        return {"reward": 1.0, "legal": 1.0, "tactic": 0.0}
    took = move in best
    return {"reward": 1.0 if took else 0.25, "legal": 1.0, "tactic": float(took)}
