"""A tic-tac-toe room whose server refuses illegal moves (drifttrio hooks).

Run it::

    drifttrio serve --store memory --hooks game:TicTacToe   # from this folder

Players connect with ``?player=x`` or ``?player=o`` on the room's socket URL and
append moves ``{"cell": 0..8}`` to the key ``moves``. The server decides each move
in the room's order, against the moves before it: a move on a taken cell, out of
turn, after the game is over, or by a spectator is refused with an ``error`` (the
npm client ignores it), so every client only ever sees legal moves.
"""

from __future__ import annotations

from typing import Any

from drifttrio.hooks import Admit, ConnectRequest, Hooks, PushRequest, Refuse, Replace, RoomView

LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]


def winner(board: dict[int, str]) -> str | None:
    """``x`` or ``o`` if they hold a line, else ``None``."""
    for a, b, c in LINES:
        if board.get(a) is not None and board.get(a) == board.get(b) == board.get(c):
            return board[a]
    return None


class TicTacToe(Hooks):
    def authorize(self, request: ConnectRequest) -> Admit:
        """Players ``x`` and ``o`` may append moves; anyone else only watches."""
        player = request.query.get("player")
        if player in ("x", "o"):
            return Admit(identity=player, keys={"moves"})
        return Admit(identity="spectator", write=False)

    def decide(self, room: RoomView, push: PushRequest) -> Refuse | Replace:
        """Run by the room task, in order: two moves sent at once are judged one
        after the other, the second against the board the first left."""
        if push.key != "moves" or push.action != "append":
            return Refuse("only moves (appends to 'moves') are allowed")
        board = {move["cell"]: move["player"] for _, move in room.values("moves")}
        cell = push.value.get("cell") if isinstance(push.value, dict) else None
        if not isinstance(cell, int) or not 0 <= cell <= 8:
            return Refuse('a move is {"cell": 0..8}')
        if winner(board) is not None or len(board) == 9:
            return Refuse("the game is over")
        turn = "x" if len(board) % 2 == 0 else "o"
        if push.identity != turn:
            return Refuse(f"not your turn: {turn} plays")
        if cell in board:
            return Refuse(f"cell {cell} is taken")
        # Stamp who played: the client sent only the cell.
        move: dict[str, Any] = {"cell": cell, "player": turn}
        return Replace(move)
