"""A linearizability checker for client histories, in the style of porcupine.

A *history* is a list of `Operation`s: which client issued it, when it was called
and when it returned (monotonic seconds), its input and its output. An operation
whose outcome is unknown (a timeout or an unavailable member: its effect may or may
not have happened) has `ret=None` (or `math.inf`) and no output; it may take effect
at any point after its call, or never.

`check(history, model)` answers LINEARIZABLE, NOT_LINEARIZABLE or UNKNOWN (the time
budget ran out) and, for a violation, explains the smallest failing partition.

## The search

Wing & Gong's algorithm with Lowe's memoization, as porcupine does it: call and
return events sorted by time form a doubly linked list; the search walks it, tries
to linearize each pending call (`model.step`), removes the call and its return from
the list when it succeeds and backtracks when it meets the return of an operation
it has not linearized. Every (set of linearized operations, model state) reached is
cached as a bitset and a state, so no configuration is explored twice.

- At equal times a call sorts before a return: such operations count as concurrent,
  which can only make the checker more permissive, never report a false violation.
- An unknown-outcome operation has a call event and no return event, so it stays
  pending to the end: the search may linearize it anywhere after its call, and the
  search succeeds as soon as every operation with a known outcome is linearized:
  unknown ones still pending then "never took effect" (equivalently, took effect
  after everything observed). Unknown read-only operations are dropped up front.
- Unknown operations are what make the search expensive (each is a candidate at every
  point after its call). So a part is first searched without the unknown operations
  the model calls unobserved (for the KV model: unknown puts and CASes whose value no
  operation read or compared against), as if they never took effect; only if that
  fails is the full part searched. A success of the reduced search is a linearization
  of the whole part, so this is sound.
- Models may be nondeterministic (`step` returns a list of possible next states);
  the search runs on sets of states (a power-set model), as porcupine does.

## P-compositionality

Linearizability is compositional: a history is linearizable iff its restriction to
each object is. `model.partition` splits a history into independent parts (the KV
model: one part per key), each searched separately, smallest first.

## What the KV model checks per key, and what it checks globally

etcd's revision is global, so a key's history cannot know which revision the next
write gets. Per key, the model keeps: the value (or absent), the version, the
mod_revision (exact, or known only to lie in a range after a write whose revision was
not observed), and a lower bound `floor` on the store's revision at that point of
the key's linearization. Since etcd's linearization order is revision order (a write
at revision r follows every read at a header revision < r and precedes every read at
a header revision >= r), projecting it onto one key gives, soundly:

- values and versions follow put/delete/CAS semantics (etcd's: a value compare on an
  absent key fails; a mod_revision compare on an absent key compares against 0);
- a read's mod_revision equals the last write's revision and is <= its header revision;
- a revision-creating write (put, delete of a present key, successful CAS) returns a
  revision > floor; a read, a delete of nothing or a failed CAS returns one >= floor;
  so per-key mod revisions and all revisions seen on one key are monotone in the
  linearization.

`KVModel.global_violations` then checks the whole history at once (this needs no
search): no two writes created the same revision; no client saw the revision go
backwards across its own sequential operations; and responses agree with real time:
if A returned before B was called, rev(B) >= rev(A), and rev(B) > rev(A) if B created
a revision.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "Operation", "Verdict", "CheckResult", "PartitionResult", "Model", "RegisterModel",
    "KVModel", "Put", "Get", "Delete", "Cas", "PutResult", "GetResult", "DeleteResult",
    "CasResult", "UNKNOWN", "check", "check_kv", "as_operation", "revision_violations",
]


# ---------------------------------------------------------------- history


@dataclasses.dataclass(frozen=True)
class Operation:
    """One client call. `ret is None` means the outcome is unknown (output is ignored)."""

    client_id: Hashable
    call: float
    ret: float | None
    input: Any
    output: Any = None

    @property
    def known(self) -> bool:
        return self.ret is not None


def as_operation(op: Operation | Mapping[str, Any]) -> Operation:
    """Accept an `Operation` or a dict with keys client_id, call, ret (None/inf), input, output."""
    if isinstance(op, Operation):
        o = op
    else:
        o = Operation(op["client_id"], op["call"], op.get("ret"), op["input"], op.get("output"))
    if o.ret is not None and math.isinf(o.ret):
        o = dataclasses.replace(o, ret=None, output=None)
    if o.ret is not None and o.ret < o.call:
        raise ValueError(f"operation returns before it is called: {o}")
    return o


# ---------------------------------------------------------------- models


class _Unknown:
    """The output `Model.step` receives for an operation whose outcome is unknown."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


class Model:
    """What the checker needs from a sequential specification.

    `step(state, input, output)` returns the list of states the object may be in after
    the operation, or [] if the output is impossible in `state`. For an unknown-outcome
    operation `output` is `UNKNOWN` and step must accept every outcome the operation could
    have had. States must be hashable.
    """

    def init(self) -> Hashable:
        raise NotImplementedError

    def step(self, state: Any, inp: Any, output: Any) -> list[Hashable]:
        raise NotImplementedError

    def partition(self, history: list[Operation]) -> list[tuple[Hashable, list[Operation]]]:
        """Independent parts of a history, each with a label. Default: one part."""
        return [(None, history)]

    def is_read_only(self, inp: Any) -> bool:
        """Read-only operations with an unknown outcome are dropped before the search."""
        return False

    def unobserved_unknowns(self, part: list[Operation]) -> set[int]:
        """Indices of unknown-outcome operations in `part` whose effect no other operation
        seems to depend on. The checker first tries the part without them (they never
        took effect), which is far cheaper to search; that is sound whatever this returns,
        since if it fails the full part is searched. Default: none."""
        return set()

    def explain(self, state: Any, inp: Any, output: Any) -> str:
        """Why `output` is impossible for `inp` in `state` (for reports)."""
        return f"impossible in state {self.describe_state(state)}"

    def describe_state(self, state: Any) -> str:
        return repr(state)

    def describe_op(self, op: Operation) -> str:
        out = "?" if not op.known else repr(op.output)
        return f"{op.input!r} -> {out}"

    def global_violations(self, history: list[Operation]) -> list[str]:
        """Checks over the whole history that need no search. Default: none."""
        return []


class RegisterModel(Model):
    """A single register. Inputs: ("write", v) -> None; ("read", None) -> v;
    ("cas", (old, new)) -> bool (writes new iff the value equals old)."""

    def __init__(self, initial: Hashable = None) -> None:
        self.initial = initial

    def init(self) -> Hashable:
        return self.initial

    def step(self, state, inp, output):
        kind, arg = inp
        if kind == "write":
            return [arg]
        if kind == "read":
            return [state] if output is UNKNOWN or output == state else []
        if kind == "cas":
            old, new = arg
            if output is UNKNOWN:
                return [new if state == old else state]
            if output != (state == old):
                return []
            return [new] if output else [state]
        raise ValueError(f"unknown register operation {inp!r}")

    def is_read_only(self, inp) -> bool:
        return inp[0] == "read"

    def explain(self, state, inp, output) -> str:
        kind, arg = inp
        if kind == "read":
            return f"read returned {output!r} but the register holds {state!r}"
        if kind == "cas":
            return (f"cas({arg[0]!r} -> {arg[1]!r}) returned {output!r} but the register "
                    f"holds {state!r}")
        return super().explain(state, inp, output)

    def describe_op(self, op: Operation) -> str:
        kind, arg = op.input
        out = "?" if not op.known else repr(op.output)
        if kind == "write":
            return f"write({arg!r})" + ("" if op.known else " -> ?")
        if kind == "read":
            return f"read() -> {out}"
        return f"cas({arg[0]!r}, {arg[1]!r}) -> {out}"


# KV model inputs and outputs. Keys and values are any hashable; a value of None means
# "absent", so None is not a storable value. Revisions left as None are not checked.

@dataclasses.dataclass(frozen=True)
class Put:
    key: Hashable
    value: Hashable


@dataclasses.dataclass(frozen=True)
class Get:
    key: Hashable


@dataclasses.dataclass(frozen=True)
class Delete:
    key: Hashable


@dataclasses.dataclass(frozen=True)
class Cas:
    """Txn: if value(key) == expect_value (or mod_revision(key) == expect_mod_revision)
    then put(key, new_value). Exactly one of the two expectations must be given."""

    key: Hashable
    new_value: Hashable
    expect_value: Hashable = None
    expect_mod_revision: int | None = None

    def __post_init__(self) -> None:
        if (self.expect_value is None) == (self.expect_mod_revision is None):
            raise ValueError("Cas needs exactly one of expect_value, expect_mod_revision")


@dataclasses.dataclass(frozen=True)
class PutResult:
    revision: int | None = None  # header revision = the put's mod_revision


@dataclasses.dataclass(frozen=True)
class GetResult:
    value: Hashable  # None: the key is absent
    mod_revision: int | None = None  # 0 (or None) when absent
    revision: int | None = None  # header revision
    version: int | None = None


@dataclasses.dataclass(frozen=True)
class DeleteResult:
    deleted: int
    revision: int | None = None


@dataclasses.dataclass(frozen=True)
class CasResult:
    succeeded: bool
    revision: int | None = None


def _creates_revision(inp: Any, out: Any) -> bool:
    if isinstance(inp, Put):
        return True
    if isinstance(inp, Delete):
        return out.deleted > 0
    if isinstance(inp, Cas):
        return out.succeeded
    return False


# KV state per key: (value, version, lo, hi, floor).
#   value None = absent (then version 0 and lo = hi = 0).
#   lo <= mod_revision <= hi: lo == hi once known; hi is math.inf after a write whose
#   revision was not observed, until a read pins or bounds it.
#   floor: a lower bound on the store revision at this point of the key's linearization
#   (exact right after an operation that reported its revision).
_KVState = tuple
_INF = math.inf


class KVModel(Model):
    """etcd-like KV semantics, partitioned by key; see the module docstring."""

    def init(self) -> _KVState:
        return (None, 0, 0, 0, 0)

    def partition(self, history):
        parts: dict[Hashable, list[Operation]] = {}
        for op in history:
            parts.setdefault(op.input.key, []).append(op)
        return list(parts.items())

    def is_read_only(self, inp) -> bool:
        return isinstance(inp, Get)

    def unobserved_unknowns(self, part: list[Operation]) -> set[int]:
        """Unknown puts and CASes whose value nothing read or compared against."""
        seen = set()
        for op in part:
            if isinstance(op.input, Cas) and op.input.expect_value is not None:
                seen.add(op.input.expect_value)
            if op.known and isinstance(op.output, GetResult) and op.output.value is not None:
                seen.add(op.output.value)
        out = set()
        for i, op in enumerate(part):
            if op.known:
                continue
            if isinstance(op.input, Put) and op.input.value not in seen:
                out.add(i)
            elif isinstance(op.input, Cas) and op.input.new_value not in seen:
                out.add(i)
        return out

    def step(self, state, inp, output):
        return self._step(state, inp, output)[0]

    def explain(self, state, inp, output) -> str:
        return self._step(state, inp, output)[1]

    def _step(self, state: _KVState, inp: Any, out: Any) -> tuple[list[_KVState], str]:
        value, version, lo, hi, floor = state
        if isinstance(inp, Get):
            return self._get(state, out)
        if isinstance(inp, Put):
            return self._write(state, inp.value, out, "put")
        if isinstance(inp, Delete):
            if out is UNKNOWN:
                if value is None:
                    return [state], ""
                return [(None, 0, 0, 0, floor + 1)], ""
            if out.deleted > 0:
                if value is None:
                    return [], f"delete reported {out.deleted} deleted but the key is absent"
                if out.revision is not None and out.revision <= floor:
                    return [], (f"delete created revision {out.revision} but the store is "
                                f"already at revision >= {floor} here")
                return [(None, 0, 0, 0, floor + 1 if out.revision is None else out.revision)], ""
            if value is not None:
                return [], f"delete deleted nothing but the key holds {value!r}"
            return self._read_revision(state, out.revision, "delete")
        if isinstance(inp, Cas):
            outcomes = self._compare(state, inp)
            if out is UNKNOWN:
                nexts = []
                for ok, s in outcomes:
                    nexts.append(self._write(s, inp.new_value, UNKNOWN, "cas")[0][0] if ok else s)
                return nexts, ""
            matching = [s for ok, s in outcomes if ok == out.succeeded]
            if not matching:
                return [], (f"cas {'succeeded' if out.succeeded else 'failed'} but the key "
                            f"holds {self._describe_value(state)}")
            if out.succeeded:
                results = [self._write(s, inp.new_value, PutResult(out.revision), "cas")
                           for s in matching]
            else:
                results = [self._read_revision(s, out.revision, "failed cas") for s in matching]
            nexts = [n for ns, _ in results for n in ns]
            return nexts, "" if nexts else results[0][1]
        raise TypeError(f"not a KV operation: {inp!r}")

    @staticmethod
    def _compare(state: _KVState, inp: Cas) -> list[tuple[bool, _KVState]]:
        """The possible compare outcomes, each with the state it implies."""
        value, version, lo, hi, floor = state
        if inp.expect_value is not None:
            return [(value is not None and value == inp.expect_value, state)]
        c = inp.expect_mod_revision
        if lo == hi:
            return [(c == lo, state)]
        # mod_revision only known to be in [lo, hi]: the compare may fail, or succeed if c
        # is in range, and then mod_revision is c.
        outcomes = [(False, state)]
        if lo <= c <= hi:
            outcomes.append((True, (value, version, c, c, max(floor, c))))
        return outcomes

    @staticmethod
    def _write(state: _KVState, new_value, out, what: str) -> tuple[list[_KVState], str]:
        value, version, lo, hi, floor = state
        rev = None if out is UNKNOWN else out.revision
        if rev is None:
            return [(new_value, version + 1, floor + 1, _INF, floor + 1)], ""
        if rev <= floor:
            return [], (f"{what} created revision {rev} but the store is already at "
                        f"revision >= {floor} here")
        return [(new_value, version + 1, rev, rev, rev)], ""

    @staticmethod
    def _read_revision(state: _KVState, rev: int | None, what: str) -> tuple[list[_KVState], str]:
        """An operation that observed the store at revision `rev` without writing."""
        value, version, lo, hi, floor = state
        if rev is None:
            return [state], ""
        if rev < floor:
            return [], (f"{what} saw header revision {rev} but the store is already at "
                        f"revision >= {floor} here")
        return [(value, version, lo, min(hi, rev), rev)], ""

    def _get(self, state: _KVState, out: GetResult) -> tuple[list[_KVState], str]:
        value, version, lo, hi, floor = state
        if out is UNKNOWN:
            return [state], ""
        if out.value != value:
            got = "absent" if out.value is None else repr(out.value)
            return [], f"get returned {got} but the key holds {self._describe_value(state)}"
        if out.version is not None and out.version != version:
            return [], f"get returned version {out.version} but the key is at version {version}"
        m = out.mod_revision
        if value is None:
            if m not in (None, 0):
                return [], f"get of an absent key returned mod_revision {m}"
        elif m is not None:
            if not lo <= m <= hi:
                return [], (f"get returned mod_revision {m} but the value {value!r} was "
                            f"written at {self._describe_mod(lo, hi)}")
            if out.revision is not None and m > out.revision:
                return [], (f"get returned mod_revision {m} above its header revision "
                            f"{out.revision}")
            lo = hi = m
            floor = max(floor, m)
        return self._read_revision((value, version, lo, hi, floor), out.revision, "get")

    @staticmethod
    def _describe_mod(lo, hi) -> str:
        if lo == hi:
            return f"revision {lo}"
        if hi == _INF:
            return f"a revision >= {lo}"
        return f"a revision in [{lo}, {hi}]"

    @staticmethod
    def _describe_value(state: _KVState) -> str:
        value, version, lo, hi, floor = state
        if value is None:
            return "nothing (absent)"
        return f"{value!r} (version {version}, written at {KVModel._describe_mod(lo, hi)})"

    def describe_state(self, state: _KVState) -> str:
        return f"key holds {self._describe_value(state)}; store revision >= {state[4]}"

    def describe_op(self, op: Operation) -> str:
        inp, out = op.input, op.output
        if isinstance(inp, Put):
            call = f"put({inp.key!r}, {inp.value!r})"
            res = "?" if not op.known else f"revision {out.revision}"
        elif isinstance(inp, Get):
            call = f"get({inp.key!r})"
            if not op.known:
                res = "?"
            elif out.value is None:
                res = f"absent (revision {out.revision})"
            else:
                res = f"{out.value!r} mod_revision {out.mod_revision} (revision {out.revision})"
        elif isinstance(inp, Delete):
            call = f"delete({inp.key!r})"
            res = "?" if not op.known else f"deleted {out.deleted} (revision {out.revision})"
        elif isinstance(inp, Cas):
            cond = (f"value == {inp.expect_value!r}" if inp.expect_value is not None
                    else f"mod_revision == {inp.expect_mod_revision}")
            call = f"cas({inp.key!r}: if {cond} then put {inp.new_value!r})"
            res = "?" if not op.known else (
                f"{'succeeded' if out.succeeded else 'failed'} (revision {out.revision})")
        else:
            return super().describe_op(op)
        return f"{call} -> {res}"

    def global_violations(self, history: list[Operation]) -> list[str]:
        return revision_violations(history, self.describe_op)


def revision_violations(history: Sequence[Operation],
                        describe: Callable[[Operation], str] = repr,
                        limit: int = 10) -> list[str]:
    """Whole-history revision checks for KV histories (see the module docstring)."""
    seen = [op for op in history
            if op.known and getattr(op.output, "revision", None) is not None]
    out: list[str] = []

    def fmt(op: Operation) -> str:
        return f"client {op.client_id} [{op.call:.6f}..{op.ret:.6f}] {describe(op)}"

    by_rev: dict[int, Operation] = {}
    for op in seen:
        if _creates_revision(op.input, op.output):
            other = by_rev.setdefault(op.output.revision, op)
            if other is not op and len(out) < limit:
                out.append(f"two writes created revision {op.output.revision}: "
                           f"{fmt(other)} and {fmt(op)}")

    def backwards(later: Operation, earlier: Operation) -> bool:
        rev, prev = later.output.revision, earlier.output.revision
        return rev < prev or (rev == prev and _creates_revision(later.input, later.output))

    # Sweep operations by call time; `best` is the highest revision returned before the
    # call, overall and per client.
    by_ret = sorted(seen, key=lambda o: o.ret)
    i = 0
    best: Operation | None = None
    best_of: dict[Hashable, Operation] = {}
    for op in sorted(seen, key=lambda o: o.call):
        while i < len(by_ret) and by_ret[i].ret < op.call:
            done = by_ret[i]
            if best is None or done.output.revision > best.output.revision:
                best = done
            mine = best_of.get(done.client_id)
            if mine is None or done.output.revision > mine.output.revision:
                best_of[done.client_id] = done
            i += 1
        mine = best_of.get(op.client_id)
        if mine is not None and backwards(op, mine):
            out.append(f"client {op.client_id} saw the revision go backwards: "
                       f"{fmt(mine)} then {fmt(op)}")
        elif best is not None and backwards(op, best):
            out.append(f"revision not in real-time order: {fmt(best)} returned before "
                       f"{fmt(op)} was called")
        if len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------- results


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown (timeout)"


@dataclasses.dataclass
class PartitionResult:
    label: Hashable
    verdict: Verdict
    ops: int
    explanation: str = ""
    seconds: float = 0.0


@dataclasses.dataclass
class CheckResult:
    verdict: Verdict
    partitions: list[PartitionResult]
    global_violations: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE

    @property
    def failing(self) -> list[PartitionResult]:
        return sorted((p for p in self.partitions if p.verdict is Verdict.NOT_LINEARIZABLE),
                      key=lambda p: p.ops)

    def explain(self) -> str:
        lines = [f"{self.verdict.value}: {len(self.partitions)} partitions checked in "
                 f"{self.seconds:.2f}s"]
        failing = self.failing
        if failing:
            labels = ", ".join(repr(p.label) for p in failing[:10])
            lines.append(f"{len(failing)} partitions not linearizable ({labels}); the smallest:")
            lines.append(failing[0].explanation)
        for v in self.global_violations:
            lines.append("global: " + v)
        unknown = [p for p in self.partitions if p.verdict is Verdict.UNKNOWN]
        if unknown:
            lines.append(f"{len(unknown)} partitions not decided within the time budget; "
                         f"the smallest:")
            lines.append(f"partition {unknown[0].label!r} ({unknown[0].ops} operations): "
                         + unknown[0].explanation)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


# ---------------------------------------------------------------- search


class _Timeout(Exception):
    pass


_CHECK_CLOCK_EVERY = 512


def _search(ops: list[Operation], model: Model, deadline: float) -> tuple[bool, int, frozenset]:
    """Lowe's search over one partition.

    Returns (linearizable, best linearized bitset, state set there); raises _Timeout.
    """
    n = len(ops)
    # Events: (time, kind, op index); kind 0 = call, 1 = return (calls first at equal times).
    events = [(op.call, 0, i) for i, op in enumerate(ops)]
    events += [(op.ret, 1, i) for i, op in enumerate(ops) if op.known]
    events.sort()
    m = len(events)
    if m == 0:
        return True, 0, frozenset([model.init()])
    head = m  # sentinel
    nxt = list(range(1, m + 1)) + [0]
    prv = [head] + list(range(m - 1)) + [-1]
    nxt[m - 1] = -1
    nxt[head] = 0
    is_call = [kind == 0 for _, kind, _ in events]
    op_of = [i for _, _, i in events]
    ret_event = [-1] * n
    for e, (_, kind, i) in enumerate(events):
        if kind == 1:
            ret_event[i] = e
    call_event = [-1] * n
    for e, (_, kind, i) in enumerate(events):
        if kind == 0:
            call_event[i] = e

    def unlink(e: int) -> None:
        p, q = prv[e], nxt[e]
        nxt[p] = q
        if q != -1:
            prv[q] = p

    def relink(e: int) -> None:
        p, q = prv[e], nxt[e]
        nxt[p] = e
        if q != -1:
            prv[q] = e

    inputs = [op.input for op in ops]
    outputs = [op.output if op.known else UNKNOWN for op in ops]
    step = model.step
    step_cache: dict[tuple[int, frozenset], frozenset] = {}

    def step_set(i: int, states: frozenset) -> frozenset:
        key = (i, states)
        r = step_cache.get(key)
        if r is None:
            r = frozenset(s2 for s in states for s2 in step(s, inputs[i], outputs[i]))
            step_cache[key] = r
        return r

    remaining = sum(1 for op in ops if op.known)
    state: frozenset = frozenset([model.init()])
    linearized = 0
    stack: list[tuple[int, frozenset]] = []
    seen: set[tuple[int, frozenset]] = set()
    best_count, best_set, best_state = -1, 0, state
    count = 0
    e = nxt[head]
    iterations = 0
    while remaining > 0:
        iterations += 1
        if iterations % _CHECK_CLOCK_EVERY == 0 and time.monotonic() > deadline:
            raise _Timeout
        if e != -1 and is_call[e]:
            i = op_of[e]
            new_state = step_set(i, state)
            if new_state:
                new_lin = linearized | (1 << i)
                key = (new_lin, new_state)
                if key not in seen:
                    seen.add(key)
                    stack.append((e, state))
                    state, linearized = new_state, new_lin
                    unlink(e)
                    if ret_event[i] != -1:
                        unlink(ret_event[i])
                        remaining -= 1
                        count += 1
                        if count > best_count:
                            best_count, best_set, best_state = count, linearized, state
                    e = nxt[head]
                    continue
            e = nxt[e]
        else:
            if not stack:
                return False, best_set, best_state
            e, state = stack.pop()
            i = op_of[e]
            linearized &= ~(1 << i)
            if ret_event[i] != -1:
                relink(ret_event[i])
                remaining += 1
                count -= 1
            relink(e)
            e = nxt[e]
    return True, linearized, state


def _explain_failure(label: Hashable, ops: list[Operation], model: Model, best_set: int,
                     best_state: frozenset) -> str:
    """The longest partial linearization found and why nothing could follow it."""
    desc = model.describe_op

    def fmt(op: Operation) -> str:
        ret = "  ?     " if not op.known else f"{op.ret:.6f}"
        return f"  client {op.client_id} [{op.call:.6f}..{ret}] {desc(op)}"

    done = [op for i, op in enumerate(ops) if best_set >> i & 1]
    left = [op for i, op in enumerate(ops) if not best_set >> i & 1]
    lines = [f"partition {label!r} ({len(ops)} operations) is not linearizable."]
    done.sort(key=lambda o: o.call)
    lines.append(f"At most {sum(1 for o in done if o.known)} of its completed operations "
                 f"linearize together, e.g. with these last ones:")
    lines += [fmt(op) for op in done[-5:]]
    states = sorted(model.describe_state(s) for s in best_state)
    lines.append("after which: " + " | ".join(states[:3]))
    known_left = [op for op in left if op.known]
    if known_left:
        first = min(known_left, key=lambda o: o.ret)
        cands = [op for op in left if op.call <= first.ret]
        cands.sort(key=lambda o: o.call)
        lines.append(f"none of the {len(cands)} operations that could come next fits "
                     f"(the earliest to return is the one that must):")
        for op in cands[:8]:
            out = op.output if op.known else UNKNOWN
            why = "; ".join(sorted({model.explain(s, op.input, out) for s in best_state}))
            lines.append(fmt(op) + "\n      " + (why or "(would fit, but leads nowhere)"))
    return "\n".join(lines)


def _check_part(label: Hashable, part: list[Operation], model: Model,
                deadline: float) -> PartitionResult:
    t0 = time.monotonic()
    if t0 >= deadline:
        return PartitionResult(label, Verdict.UNKNOWN, len(part), "not checked: no time left")
    reduced_failure = ""
    drop = model.unobserved_unknowns(part)
    if drop:
        # Cheap first: those unknown operations never took effect. Half the budget, so
        # that the full search keeps some.
        reduced = [op for i, op in enumerate(part) if i not in drop]
        try:
            ok, best_set, best_state = _search(reduced, model, t0 + (deadline - t0) / 2)
            if ok:
                return PartitionResult(label, Verdict.LINEARIZABLE, len(part),
                                       seconds=time.monotonic() - t0)
            reduced_failure = _explain_failure(label, reduced, model, best_set, best_state)
        except _Timeout:
            pass
    try:
        ok, best_set, best_state = _search(part, model, deadline)
    except _Timeout:
        why = "the search ran out of time"
        if reduced_failure:
            why += (f"; it is NOT linearizable unless some of its {len(drop)} unknown-outcome "
                    f"operations whose values nobody read took effect. Without them:\n"
                    + reduced_failure)
        return PartitionResult(label, Verdict.UNKNOWN, len(part), why,
                               time.monotonic() - t0)
    if ok:
        return PartitionResult(label, Verdict.LINEARIZABLE, len(part),
                               seconds=time.monotonic() - t0)
    why = _explain_failure(label, part, model, best_set, best_state)
    return PartitionResult(label, Verdict.NOT_LINEARIZABLE, len(part), why,
                           time.monotonic() - t0)


def check(history: Iterable[Operation | Mapping[str, Any]], model: Model,
          timeout: float = 10.0) -> CheckResult:
    """Check a history against a model within `timeout` seconds (then UNKNOWN)."""
    start = time.monotonic()
    deadline = start + timeout
    ops = [as_operation(op) for op in history]
    global_v = model.global_violations(ops)
    parts = []
    for label, part in model.partition(ops):
        part = [op for op in part if op.known or not model.is_read_only(op.input)]
        parts.append((label, part))
    parts.sort(key=lambda p: len(p[1]))
    # First pass: each part gets a fair share of what is left; second pass: the parts
    # that ran out of time share whatever the quick ones did not use.
    results: list[PartitionResult] = []
    for n, (label, part) in enumerate(parts):
        share = (deadline - time.monotonic()) / (len(parts) - n)
        results.append(_check_part(label, part, model, time.monotonic() + share))
    for n, r in enumerate(results):
        if r.verdict is Verdict.UNKNOWN and time.monotonic() < deadline:
            spent = r.seconds
            results[n] = _check_part(r.label, parts[n][1], model, deadline)
            results[n].seconds += spent
    if global_v or any(r.verdict is Verdict.NOT_LINEARIZABLE for r in results):
        verdict = Verdict.NOT_LINEARIZABLE
    elif any(r.verdict is Verdict.UNKNOWN for r in results):
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.LINEARIZABLE
    return CheckResult(verdict, results, global_v, time.monotonic() - start)


def check_kv(history: Iterable[Operation | Mapping[str, Any]], timeout: float = 10.0
             ) -> CheckResult:
    """`check` with the etcd-like KV model."""
    return check(history, KVModel(), timeout)
