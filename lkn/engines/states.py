"""The states of an engine process and every legal move between them.

The main line::

    STOPPED --start--> STARTING --healthy--> READY --stop--> STOPPING --> STOPPED
                          |                  |  ^
                          +--> FAILED        v  | (SGLang releases and resumes its memory)
                   (exit, timeout, crash)   ASLEEP

``TRANSITIONS`` lists every move of ``EngineProcess`` with the code that makes it;
``REMOTE_TRANSITIONS`` those of ``RemoteProcess``, which has nothing to stop and never sleeps.
A move outside its table is a bug in lkn: it is logged and recorded on the process, never
raised, because the state it goes to is still the truth about the child (raising would leave
the process in a state that lies).
"""
from __future__ import annotations

import enum
from collections.abc import Mapping


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"
    ASLEEP = "asleep"


Table = Mapping[State, frozenset[State]]

# Each entry names the code that makes the move (lkn.engines.process).
TRANSITIONS: Table = {
    State.STOPPED: frozenset({State.STARTING}),               # _start
    State.STARTING: frozenset({
        State.READY,     # _start: healthy and on_ready done
        State.FAILED,    # _start: spawn failed, exited, timed out, aborted; _settle_failed
    }),
    State.READY: frozenset({
        State.STOPPING,  # stop
        State.ASLEEP,    # sleep: memory released
        State.FAILED,    # _watch_exit / _watch: crashed; _fail_running: release failed
    }),
    State.ASLEEP: frozenset({
        State.READY,     # _wake: memory resumed
        State.STOPPING,  # stop
        State.FAILED,    # _watch_exit / _watch: crashed; _fail_running: resume failed
    }),
    State.STOPPING: frozenset({
        State.STOPPED,   # stop: the tree is gone
        State.FAILED,    # _settle_failed: the stop itself raised
    }),
    State.FAILED: frozenset({
        State.STARTING,  # _start: the manager restarts it on demand
        State.STOPPED,   # stop: reset
    }),
}

# RemoteProcess (lkn.engines.remote): a health check instead of a start, and stop() is instant
# from any state, so it has no STOPPING and no ASLEEP.
REMOTE_TRANSITIONS: Table = {
    State.STOPPED: frozenset({State.STARTING}),                           # ensure_ready
    State.STARTING: frozenset({State.READY, State.FAILED, State.STOPPED}),  # check; stop
    State.READY: frozenset({State.STOPPED}),                              # stop
    State.FAILED: frozenset({State.STARTING, State.STOPPED}),             # ensure_ready; stop
}


def is_legal(old: State, new: State, table: Table = TRANSITIONS) -> bool:
    """Whether ``old -> new`` is a move of ``table``."""
    return new in table.get(old, frozenset())
