"""The lifecycle tables (:mod:`streamcore.proto.state`) and the three that use it: HTTP
connection, WebSocket connection, stream."""

from __future__ import annotations

import pytest

from streamcore.proto import pipe, ws
from streamcore.proto.http import HTTP_STATES, Phase
from streamcore.proto.state import InvalidTransition, State, Table

#: Each table, and its error state (every lifecycle must have one, reachable).
TABLES = {
    "http": (HTTP_STATES, Phase.ERROR),
    "websocket": (ws.WS_STATES, ws.FAILED),
    "stream": (pipe.STREAM_STATES, pipe.FAILED),
}


def reachable(table: Table) -> set[State]:
    seen = {table.initial}
    todo = [table.initial]
    while todo:
        for target in table.transitions[todo.pop()].values():
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


@pytest.fixture(params=sorted(TABLES))
def table_and_error(request: pytest.FixtureRequest) -> tuple[Table, State]:
    return TABLES[request.param]


def test_every_state_is_reachable_from_the_initial_state(
        table_and_error: tuple[Table, State]) -> None:
    table, _ = table_and_error
    assert reachable(table) == set(table.states)


def test_terminal_states_have_no_transitions_and_others_do(
        table_and_error: tuple[Table, State]) -> None:
    table, _ = table_and_error
    for state in table.states:
        assert bool(table.transitions[state]) is not state.terminal, state
    # ... and every lifecycle ends: some terminal state is reachable.
    assert any(state.terminal for state in reachable(table))


def test_an_error_state_exists_is_terminal_and_is_reachable_from_every_live_state(
        table_and_error: tuple[Table, State]) -> None:
    table, error = table_and_error
    assert error in table.states and error.terminal
    assert error.lifecycle == table.name
    for state in table.states:
        if not state.terminal:
            assert error in table.transitions[state].values(), state


def test_states_belong_to_their_table(table_and_error: tuple[Table, State]) -> None:
    table, _ = table_and_error
    assert {state.lifecycle for state in table.states} == {table.name}
    assert len({state.name for state in table.states}) == len(table.states)


def test_next_follows_every_listed_pair_and_refuses_every_other(
        table_and_error: tuple[Table, State]) -> None:
    table, _ = table_and_error
    events = list(table.events())
    for state in table.states:
        for event in [*events, "no-such-event"]:
            target = table.transitions[state].get(event)
            if target is None:
                with pytest.raises(InvalidTransition, match=f"from {state.name} on"):
                    table.next(state, event)
            else:
                assert table.next(state, event) is target


def test_next_refuses_a_state_of_another_table() -> None:
    with pytest.raises(InvalidTransition):
        HTTP_STATES.next(ws.OPEN, "send_close")


def test_invalid_transition_is_our_bug_not_a_protocol_error() -> None:
    from streamcore.errors import StreamcoreError

    assert issubclass(InvalidTransition, RuntimeError)
    assert not issubclass(InvalidTransition, StreamcoreError)


def test_rows_list_every_transition_once() -> None:
    rows = ws.WS_STATES.rows()
    assert rows == [
        ("OPEN", "send_close", "CLOSING"), ("OPEN", "recv_close", "CLOSED"),
        ("OPEN", "fail", "FAILED"), ("OPEN", "lost", "FAILED"),
        ("CLOSING", "recv_close", "CLOSED"), ("CLOSING", "fail", "FAILED"),
        ("CLOSING", "lost", "FAILED"),
    ]
    for table, _ in TABLES.values():
        assert len(table.rows()) == sum(map(len, table.transitions.values()))
        for state, event, target in table.rows():
            named = {s.name: s for s in table.states}
            assert table.next(named[state], event) is named[target]


def test_events_sorted_and_complete() -> None:
    assert list(pipe.STREAM_STATES.events()) == ["cancel", "end", "fail", "pause", "resume",
                                                 "start"]
    assert list(HTTP_STATES.events()) == ["body", "close", "data", "done", "fail", "head",
                                          "upgrade"]


def test_table_refuses_a_terminal_state_with_transitions() -> None:
    a = State("t", "A")
    end = State("t", "END", terminal=True)
    with pytest.raises(ValueError, match="terminal but has transitions"):
        Table("t", a, {a: {"x": end}, end: {"y": a}})


def test_table_refuses_a_target_not_in_the_table() -> None:
    a = State("t", "A")
    stray = State("t", "STRAY")
    with pytest.raises(ValueError, match="not in the table"):
        Table("t", a, {a: {"x": stray}})


def test_table_copies_its_transitions() -> None:
    a = State("t", "A")
    b = State("t", "B", terminal=True)
    moves = {"x": b}
    table = Table("t", a, {a: moves, b: {}})
    moves["y"] = a
    with pytest.raises(InvalidTransition):
        table.next(a, "y")


def test_state_repr() -> None:
    assert repr(Phase.IDLE) == "<http IDLE>"
    assert repr(pipe.CANCELLED) == "<stream CANCELLED>"
    assert not Phase.IDLE.terminal and Phase.CLOSED.terminal
