"""Lifecycle tables: every state a lifecycle can be in, and every transition, in one place.

The model is h11's ``_state.py``: a lifecycle's state changes only through
:meth:`Table.next`, which looks the pair ``(state, event)`` up in one dict and refuses any
pair the table does not list.  Three lifecycles use it -- an HTTP connection
(:data:`streamcore.proto.http.HTTP_STATES`), a WebSocket connection
(:data:`streamcore.proto.ws.WS_STATES`) and a stream (:data:`streamcore.proto.pipe.STREAM_STATES`)
-- and ``docs/architecture.md`` draws each from its table.  Transitions are where
metrics will count (never per token: tokens move without changing a state).

A state is a small object rather than an ``Enum`` member: hot paths test
``state.terminal`` or ``state is X`` with one attribute load or one identity check,
where an ``Enum`` would hash in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class State:
    """One state of one lifecycle.  ``terminal``: nothing follows it but the end."""

    __slots__ = ("lifecycle", "name", "terminal")

    def __init__(self, lifecycle: str, name: str, *, terminal: bool = False) -> None:
        self.lifecycle = lifecycle
        self.name = name
        self.terminal = terminal

    def __repr__(self) -> str:
        return f"<{self.lifecycle} {self.name}>"


class InvalidTransition(RuntimeError):
    """A transition the table does not list: a bug of ours, never the peer's doing (the
    peer's mistakes are :class:`~streamcore.errors.ProtocolError`)."""


class Table:
    """The transitions of one lifecycle: ``{state: {event: next state}}``."""

    __slots__ = ("initial", "name", "states", "transitions")

    def __init__(self, name: str, initial: State,
                 transitions: Mapping[State, Mapping[str, State]]) -> None:
        self.name = name
        self.initial = initial
        self.transitions = {state: dict(moves) for state, moves in transitions.items()}
        self.states: tuple[State, ...] = tuple(self.transitions)
        for state, moves in self.transitions.items():
            if state.terminal and moves:
                raise ValueError(f"{state!r} is terminal but has transitions")
            for target in moves.values():
                if target not in self.transitions:
                    raise ValueError(f"{state!r} leads to {target!r}, not in the table")

    def next(self, state: State, event: str) -> State:
        """The state after ``event`` in ``state``; :class:`InvalidTransition` if none."""
        try:
            return self.transitions[state][event]
        except KeyError:
            raise InvalidTransition(f"{self.name}: no transition from {state.name} on "
                                    f"{event!r}") from None

    def events(self) -> Iterable[str]:
        return sorted({event for moves in self.transitions.values() for event in moves})

    def rows(self) -> list[tuple[str, str, str]]:
        """``(state, event, next state)`` for every transition, for documentation."""
        return [(state.name, event, target.name)
                for state, moves in self.transitions.items()
                for event, target in moves.items()]
