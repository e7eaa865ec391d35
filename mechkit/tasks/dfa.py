"""Partial DFAs over the 18 REGBENCH letters: stepping, uniform-PFA sampling, minimization, random generation.

Every state accepts and a missing transition rejects, so a language is prefix-closed and two states are equivalent
iff they accept the same continuations. The random generator follows `berlino/seq_icl` (`src/dataloaders/dfa.py`,
`RandomDFASampler` + pythomata's `minimize().trim()`); minimization here is Moore partition refinement, and DFAs are
renumbered canonically (BFS from state 0 in symbol order) so that `DFA.key()` is the same for isomorphic automata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mechkit.errors import MechkitError

N_LETTERS = 18


@dataclass(frozen=True)
class DFA:
    """A partial DFA over letter ids 0..17: start state 0, every state accepting, a missing transition rejects.

    `transitions` maps (state, symbol) -> state; pass a dict or its items, it is stored as sorted items.
    """

    n_states: int
    transitions: tuple[tuple[tuple[int, int], int], ...]
    _table: dict = field(init=False, repr=False, compare=False)
    _out: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pairs = list(self.transitions.items() if isinstance(self.transitions, Mapping) else self.transitions)
        table = {(int(s), int(a)): int(t) for (s, a), t in pairs}
        if self.n_states < 1 or len(table) != len(pairs):
            raise MechkitError("A DFA needs n_states >= 1 and one target per (state, symbol); fix the transitions.")
        for (s, a), t in table.items():
            if not (0 <= s < self.n_states and 0 <= t < self.n_states and 0 <= a < N_LETTERS):
                raise MechkitError(
                    f"DFA transition ({s}, {a}) -> {t} is out of range; states are 0..{self.n_states - 1} "
                    f"and symbols 0..{N_LETTERS - 1}."
                )
        out = [[] for _ in range(self.n_states)]
        for s, a in sorted(table):
            out[s].append(a)
        object.__setattr__(self, "transitions", tuple(sorted(table.items())))
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_out", tuple(tuple(o) for o in out))

    def step(self, state: int, symbol: int) -> int | None:
        """The next state, or None when `symbol` has no transition from `state` (reject)."""
        return self._table.get((state, symbol))

    def next_symbols(self, state: int) -> tuple[int, ...]:
        """The symbols with a transition out of `state`, ascending."""
        return self._out[state]

    def run(self, symbols: Sequence[int], state: int = 0) -> int | None:
        """The state after reading `symbols` from `state`, or None if the string is rejected."""
        for a in symbols:
            state = self.step(state, a)
            if state is None:
                return None
        return state

    def accepts(self, symbols: Sequence[int]) -> bool:
        """Whether the string is in the language (every state accepts, so: no missing transition)."""
        return self.run(symbols) is not None

    def sample_string(self, rng: np.random.Generator, length: int) -> list[int]:
        """A string of up to `length` symbols: uniform over the outgoing edges at each step, stopping at a dead end."""
        state, out = 0, []
        for _ in range(length):
            options = self.next_symbols(state)
            if not options:
                break
            out.append(options[int(rng.integers(len(options)))])
            state = self.step(state, out[-1])
        return out

    def key(self) -> tuple:
        """Hashable canonical form of the reachable part: equal for isomorphic DFAs."""
        canon = _renumber(self)
        return canon.n_states, canon.transitions


def _bfs_order(dfa: DFA) -> list[int]:
    """Reachable states in breadth-first order from 0, successors visited in symbol order."""
    order, seen = [0], {0}
    for s in order:
        for a in dfa.next_symbols(s):
            t = dfa.step(s, a)
            if t not in seen:
                seen.add(t)
                order.append(t)
    return order


def _renumber(dfa: DFA) -> DFA:
    """Drop unreachable states and number the rest in canonical BFS order."""
    new = {s: i for i, s in enumerate(_bfs_order(dfa))}
    return DFA(len(new), {(new[s], a): new[t] for (s, a), t in dfa.transitions if s in new})


def minimize(dfa: DFA) -> DFA:
    """Trim unreachable states, merge equivalent ones (Moore partition refinement), renumber canonically.

    All states accept, so two states are equivalent iff they accept the same continuations; a missing transition
    goes to an implicit rejecting sink (block -1).
    """
    order = _bfs_order(dfa)
    symbols = sorted({a for (_, a), _ in dfa.transitions})
    block, n_blocks = {s: 0 for s in order}, 1
    while True:
        signatures = {s: (block[s], *(block.get(dfa.step(s, a), -1) for a in symbols)) for s in order}
        ids: dict[tuple, int] = {}
        block = {s: ids.setdefault(signatures[s], len(ids)) for s in order}  # state 0 stays in block 0
        if len(ids) == n_blocks:
            break
        n_blocks = len(ids)
    quotient = {(block[s], a): block[t] for (s, a), t in dfa.transitions if s in block}
    return _renumber(DFA(n_blocks, quotient))


def check_dfa_params(min_states: int, max_states: int, min_alphabet: int, max_alphabet: int, max_out: int) -> None:
    """Raise `MechkitError` unless the `random_dfa` ranges are usable."""
    if not 2 <= min_states <= max_states:
        raise MechkitError(f"Need 2 <= min_states <= max_states, got {min_states} and {max_states}.")
    if not 1 <= min_alphabet <= max_alphabet <= N_LETTERS:
        raise MechkitError(f"Need 1 <= min_alphabet <= max_alphabet <= {N_LETTERS}, got {min_alphabet}/{max_alphabet}.")
    if max_out < 2:
        raise MechkitError(f"max_out is numpy's exclusive bound on out-edges per state; use >= 2, got {max_out}.")


def random_dfa(
    rng: np.random.Generator,
    max_states: int = 12,
    min_states: int = 4,
    max_alphabet: int = 18,
    min_alphabet: int = 4,
    max_out: int = 4,
) -> DFA:
    """A random minimal DFA as in the reference sampler, canonically numbered.

    n_states ~ U{min_states..max_states}; alphabet: U{min_alphabet..max_alphabet} letters without replacement; each
    state gets rng.integers(1, max_out) distinct symbols (capped by the alphabet and n_states - 1), each to a distinct
    other state (no self loops); then trimmed and minimized.
    """
    check_dfa_params(min_states, max_states, min_alphabet, max_alphabet, max_out)
    n_states = int(rng.integers(min_states, max_states + 1))
    alphabet = rng.choice(N_LETTERS, size=int(rng.integers(min_alphabet, max_alphabet + 1)), replace=False)
    transitions = {}
    for s in range(n_states):
        n_out = min(int(rng.integers(1, max_out)), len(alphabet), n_states - 1)
        symbols = rng.choice(alphabet, size=n_out, replace=False)
        targets = rng.choice([t for t in range(n_states) if t != s], size=n_out, replace=False)
        transitions.update({(s, int(a)): int(t) for a, t in zip(symbols, targets)})
    return minimize(DFA(n_states, transitions))
