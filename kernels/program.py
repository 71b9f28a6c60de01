"""Compiles a list of ops into the flat slot program every backend executes, and decodes its status codes.

A program works on one row at a time in a float64 scratch row of `n_slots` slots: gather input columns
into slots, run op records over slot ranges in order, emit slots [0, n_out) as the output row. Slots
are numbered so the outputs come first and each elementwise op covers contiguous runs, which keeps
the compiled inner loops unit-stride and vectorisable.
"""

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, KernelError, NonFiniteInputError, NonFiniteOutputError, UnknownCategoryError
from .ops import Bucketize, Clip, Impute, Log1p, MinMax, OneHot, Op, Select, Standardize

logger = logging.getLogger(__name__)

# Op record kinds (column OP_KIND of Program.ops); the .pyx and numba kernels switch on these numbers.
# Consecutive impute/standardize/minmax/clip ops over the same columns compile into one K_AFFINE record
# (impute, then one affine map, then clip), so the common numeric pipeline is a single pass per row.
K_AFFINE = 1  # v = p[t] (fill) where NaN; v = (v - p[w+t]) * p[2w+t] + p[3w+t]; v = min(max(v, p[4w+t]), p[5w+t])
K_AFFINE_DIV = 2  # as K_AFFINE but v = (v - p[w+t]) / p[2w+t] + p[3w+t]: an exact-mode standardize (see compile_ops)
K_LOG1P = 5  # slot = log1p(slot)
K_BUCKETIZE = 6  # slot = count of edges <= slot; edges of run slot t: p[ip[ioff + t] : ip[ioff + t + 1]]
K_ONEHOT = 7  # slots ip[ioff + j] = (slot[aux] == p[poff + j]) for j < count; dest -1 = dropped category
K_COPY = 8  # slot[lo] = slot[aux]
AFFINE_BLOCKS = 6  # parameter blocks of a K_AFFINE record: fill, sub, mul, add, low, high
# Per-column parameters of a K_AFFINE record that change nothing (NaN fill keeps NaN for the output check).
AFFINE_IDENTITY = (math.nan, 0.0, 1.0, 0.0, -math.inf, math.inf)
# Stages of a K_AFFINE record: an op may join the record only at or after the stage reached so far.
_STAGE_IMPUTE, _STAGE_AFFINE, _STAGE_CLIP = 0, 1, 2

# Columns of one op record (int64 row of Program.ops).
OP_KIND, OP_LO, OP_HI, OP_POFF, OP_AUX, OP_COUNT, OP_IOFF, OP_FLAG = range(8)
OP_WIDTH = 8  # int64 fields per op record

# What a single-affine fast loop tests per element (equal to IG_CHECK_* of kernels/_affine_rows.h).
# CHECK_PRECLIP: the value before the clip is finite. An infinite input never is (inf or NaN survives -, *, +),
# and when every clip bound lies within the output type's range a finite pre-clip value cannot give a
# non-finite output, so that one test covers both error kinds. CHECK_OUTPUT: the stored value is finite;
# with no finite clip bound the output is the pre-clip value itself, so that one test covers both.
# A flagged row is re-run on the checking path, which reports the error or, for a pre-clip overflow the
# clip made finite, finds none.
CHECK_PRECLIP = 1
CHECK_OUTPUT = 2

# Status codes a backend reports for the first failing row of a chunk.
STATUS_OK = 0
STATUS_INPUT_INF = 1  # column = input column, value = the input
STATUS_UNKNOWN_CATEGORY = 2  # column = op record index, value = the slot value
STATUS_OUTPUT_NONFINITE = 3  # column = output column, value = the output
STATUS_WIDTH = 3  # int64 fields per status record: code, row, column


@dataclass(frozen=True, eq=False)
class Program:
    """The lowered pipeline; arrays are read-only and shared by every backend."""

    n_features_in: int
    n_out: int
    n_slots: int
    gather_slot: np.ndarray  # int64 (g,): scratch slot each gathered input column lands in
    gather_col: np.ndarray  # int64 (g,): input column, ascending so a row is read front to back
    ops: np.ndarray  # int64 (n_ops, OP_WIDTH) op records
    fparams: np.ndarray  # float64 op parameters
    iparams: np.ndarray  # int64 op parameters (bucket edge offsets, one-hot destinations)
    slot_source: np.ndarray  # int64 (n_slots,): input column a slot derives from, -1 if none


# A record while compiling: (kind, symbolic slots, per-field parameter lists, extras). The extras are
# small integers: "src" (source slot of a copy or one-hot), "ignore" (one-hot unknowns are zeros), and
# for K_AFFINE records "stage" (last _STAGE_* joined) and "affine" (whether an affine map has joined).
_Record = tuple[int, list[int], list[list[Any]], dict[str, int]]


class _Builder:
    """Symbolic slots while compiling; `lower` renumbers them once the outputs are known."""

    def __init__(self, n_features_in: int) -> None:
        self.n_features_in = n_features_in
        self.slot_source: list[int] = []
        self.gather: list[tuple[int, int]] = []  # (slot, input column)
        self.records: list[_Record] = []

    def new_slot(self, source: int) -> int:
        self.slot_source.append(source)
        return len(self.slot_source) - 1

    def gather_columns(self, columns: tuple[int, ...]) -> list[int]:
        slots = []
        for column in columns:
            slot = self.new_slot(column)
            self.gather.append((slot, column))
            slots.append(slot)
        return slots


def _resolve_columns(op: Op, width: int, step: int) -> list[int]:
    columns = list(range(width)) if op.columns is None else list(op.columns)
    for column in columns:
        if column >= width:
            raise ConfigError(f"steps[{step}].columns", f"column {column} is out of range for {width} columns")
    if not isinstance(op, Select) and len(set(columns)) != len(columns):
        raise ConfigError(f"steps[{step}].columns", f"column listed twice in {columns}")
    return columns


def _per_column(values: tuple[Any, ...], n: int, step: int, field: str) -> list[Any]:
    if len(values) == 1 and n != 1:
        return list(values) * n
    if len(values) != n:
        raise ConfigError(f"steps[{step}].{field}", f"has {len(values)} entries for {n} columns")
    return list(values)


_ELEMENTWISE = {Impute: (K_AFFINE, ("values",)), Standardize: (K_AFFINE, ("mean", "scale")),
                MinMax: (K_AFFINE, ("scale", "offset")), Clip: (K_AFFINE, ("low", "high")), Log1p: (K_LOG1P, ()),
                Bucketize: (K_BUCKETIZE, ("boundaries",))}


def compile_ops(ops: list[Op], n_features_in: int, *, exact: bool = False) -> Program:
    """Lower validated ops (sequential matrix semantics) into a Program; raises ConfigError.

    By default consecutive affine ops compose into one map and a standardize multiplies by 1/scale,
    which may round differently from scikit-learn by an ulp. exact=True keeps one affine map per op
    and divides by scale (K_AFFINE_DIV), bit-equal to scikit-learn's float64 steps, so a later
    bucketize puts a value lying on a bin edge in the same bin as KBinsDiscretizer; it costs more
    passes per row and gives up the single-record fast path.
    """
    if n_features_in < 1:
        raise ConfigError("n_features_in", f"must be positive, got {n_features_in}")
    builder = _Builder(n_features_in)
    steps = list(ops)
    if steps and isinstance(steps[0], Select) and steps[0].columns is not None:
        # A leading selection is a gather: each selected column (duplicates too) is read once into its own slot.
        cur = builder.gather_columns(tuple(_resolve_columns(steps[0], n_features_in, 0)))
        first = 1
    else:
        cur = builder.gather_columns(tuple(range(n_features_in)))
        first = 0
    for step in range(first, len(steps)):
        cur = _compile_step(builder, steps[step], cur, step, exact)
    return _lower(builder, cur)


def _compile_step(builder: _Builder, op: Op, cur: list[int], step: int, exact: bool) -> list[int]:
    columns = _resolve_columns(op, len(cur), step)
    if isinstance(op, Select):
        seen: set[int] = set()
        selected = []
        for column in columns:
            slot = cur[column]
            if slot in seen:
                # Two columns must not share a slot: a later op on one would change the other.
                copy = builder.new_slot(builder.slot_source[slot])
                builder.records.append((K_COPY, [copy], [], {"src": slot}))
                slot = copy
            seen.add(slot)
            selected.append(slot)
        return selected
    if isinstance(op, OneHot):
        return _compile_onehot(builder, op, cur, columns, step)
    kind, fields = _ELEMENTWISE[type(op)]
    params = [_per_column(getattr(op, field), len(columns), step, field) for field in fields]
    slots = [cur[c] for c in columns]
    if kind == K_AFFINE:
        _add_affine(builder, op, slots, params, exact)
    else:
        builder.records.append((kind, slots, params, {}))
    return cur


def _add_affine(builder: _Builder, op: Op, slots: list[int], params: list[list[float]], exact: bool) -> None:
    """Fold op into the previous K_AFFINE record when it covers the same slots and comes at a later stage.

    A record applies impute, then one affine map, then clip; affine ops compose among themselves, so
    impute -> standardize -> minmax -> clip is one record. Backends agree exactly because they all run
    the composed record; against running the ops one by one it differs by float rounding only.
    With exact, affine ops do not compose (a second one starts a new record) and a standardize
    divides, so each record rounds as the op it came from does in scikit-learn.
    """
    stage = _STAGE_IMPUTE if isinstance(op, Impute) else _STAGE_CLIP if isinstance(op, Clip) else _STAGE_AFFINE
    last = builder.records[-1] if builder.records else None
    if last is not None and last[0] in (K_AFFINE, K_AFFINE_DIV) and last[1] == slots:
        last_stage = last[3]["stage"]
        can_join = last_stage < stage or (last_stage == stage == _STAGE_AFFINE and not exact)
    else:
        can_join = False
    if last is None or not can_join:
        last = (K_AFFINE, slots, [[value] * len(slots) for value in AFFINE_IDENTITY], {"stage": stage, "affine": False})
        builder.records.append(last)
    if exact and isinstance(op, Standardize):
        # Only an impute can be in this record yet (exact records hold one affine op), so nothing was scaled.
        last = (K_AFFINE_DIV, *last[1:])
        builder.records[-1] = last
    fill, sub, mul, add, low, high = last[2]
    has_affine = bool(last[3]["affine"])
    for t in range(len(slots)):
        if isinstance(op, Impute):
            fill[t] = params[0][t]
        elif isinstance(op, Clip):
            low[t], high[t] = params[0][t], params[1][t]
        elif last[0] == K_AFFINE_DIV:  # an exact standardize: (v - mean) / scale, as StandardScaler
            sub[t], mul[t] = params[0][t], params[1][t]
        elif isinstance(op, Standardize):
            inv = 1.0 / params[1][t]
            if has_affine:  # ((v - sub) * mul + add - mean) / scale
                mul[t], add[t] = mul[t] * inv, (add[t] - params[0][t]) * inv
            else:  # keep the first centring as a subtraction, exact as StandardScaler's
                sub[t], mul[t] = params[0][t], inv
        else:  # MinMax: v * scale + offset
            mul[t], add[t] = mul[t] * params[0][t], add[t] * params[0][t] + params[1][t]
    last[3]["stage"] = stage
    last[3]["affine"] = has_affine or stage == _STAGE_AFFINE


def _compile_onehot(builder: _Builder, op: OneHot, cur: list[int], columns: list[int], step: int) -> list[int]:
    categories = _per_column(op.categories, len(columns), step, "categories")
    drops = _per_column(op.drop or (-1,), len(columns), step, "drop")
    expanded: dict[int, list[int]] = {}
    for column, cats, drop in zip(columns, categories, drops):
        src = cur[column]
        dests = [-1 if j == drop else builder.new_slot(builder.slot_source[src]) for j in range(len(cats))]
        builder.records.append((K_ONEHOT, dests, [list(cats)],
                                {"src": src, "ignore": op.handle_unknown == "ignore"}))
        expanded[column] = [d for d in dests if d >= 0]
    return [slot for position, old in enumerate(cur) for slot in expanded.get(position, [old])]


def _live_records(builder: _Builder, outputs: list[int]) -> tuple[list[_Record], set[int]]:
    """Drop work whose result never reaches the output (columns a later selection discards)."""
    live = set(outputs)
    kept = []
    for kind, slots, params, extra in reversed(builder.records):
        if kind in (K_COPY, K_ONEHOT):
            if not any(s in live for s in slots):
                continue
            live.add(extra["src"])
            kept.append((kind, slots, params, extra))
            continue
        keep = [i for i, s in enumerate(slots) if s in live]
        if keep:
            kept.append((kind, [slots[i] for i in keep], [[p[i] for i in keep] for p in params], extra))
    return kept[::-1], live


def _lower(builder: _Builder, outputs: list[int]) -> Program:
    records, live = _live_records(builder, outputs)
    order = {slot: index for index, slot in enumerate(outputs)}
    for slot in range(len(builder.slot_source)):
        if slot in live and slot not in order:
            order[slot] = len(order)
    n_slots = max(len(order), 1)
    gather = sorted(((order[s], c) for s, c in builder.gather if s in live), key=lambda sc: sc[1])
    slot_source = np.full(n_slots, -1, dtype=np.int64)
    for slot, index in order.items():
        slot_source[index] = builder.slot_source[slot]
    rows: list[list[int]] = []
    fparams: list[float] = []
    iparams: list[int] = []
    for kind, slots, params, extra in records:
        if kind == K_COPY:
            rows.append([K_COPY, order[slots[0]], order[slots[0]] + 1, 0, order[extra["src"]], 0, 0, 0])
        elif kind == K_ONEHOT:
            rows.append([K_ONEHOT, 0, 0, len(fparams), order[extra["src"]], len(slots), len(iparams),
                         int(bool(extra["ignore"]))])
            fparams.extend(params[0])
            iparams.extend(order[s] if s >= 0 else -1 for s in slots)
        else:
            _lower_elementwise(kind, [order[s] for s in slots], params, rows, fparams, iparams)
    ops = np.array(rows, dtype=np.int64).reshape(len(rows), 8)
    gather_slot = np.array([s for s, _ in gather], dtype=np.int64)
    gather_col = np.array([c for _, c in gather], dtype=np.int64)
    program = Program(builder.n_features_in, len(outputs), n_slots, gather_slot, gather_col,
                      ops, np.array(fparams, dtype=np.float64), np.array(iparams, dtype=np.int64), slot_source)
    for array in (program.gather_slot, program.gather_col, program.ops, program.fparams, program.iparams,
                  program.slot_source):
        array.setflags(write=False)
    return program


def _lower_elementwise(kind: int, slots: list[int], params: list[list[Any]], rows: list[list[int]],
                       fparams: list[float], iparams: list[int]) -> None:
    """Sort by slot and split into contiguous runs, each an op record with its parameter block."""
    order = sorted(range(len(slots)), key=lambda i: slots[i])
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and slots[order[stop]] == slots[order[stop - 1]] + 1:
            stop += 1
        run = order[start:stop]
        lo, hi = slots[run[0]], slots[run[-1]] + 1
        if kind == K_BUCKETIZE:
            ioff = len(iparams)
            for i in run:
                iparams.append(len(fparams))
                fparams.extend(params[0][i])
            iparams.append(len(fparams))
            rows.append([kind, lo, hi, 0, 0, 0, ioff, 0])
        else:
            rows.append([kind, lo, hi, len(fparams), 0, 0, 0, 0])
            for block in params:
                fparams.extend(float(block[i]) for i in run)
        start = stop


def single_affine_params(program: Program) -> np.ndarray | None:
    """The (AFFINE_BLOCKS, n) parameter rows when the program is one K_AFFINE record from every input column
    straight to the same output column (impute/standardize/minmax/clip over all columns), else None.

    Such a program needs no scratch row: backends run it as one tight loop from input row to output row.
    """
    n = program.n_features_in
    is_identity = (program.n_out == n and program.gather_col.shape[0] == n
                   and bool(np.array_equal(program.gather_col, np.arange(n)))
                   and bool(np.array_equal(program.gather_slot, np.arange(n))))
    if not is_identity or program.ops.shape[0] != 1:
        return None
    record = program.ops[0]
    if record[OP_KIND] != K_AFFINE or record[OP_LO] != 0 or record[OP_HI] != n or record[OP_POFF] != 0:
        return None
    return program.fparams[:AFFINE_BLOCKS * n].reshape(AFFINE_BLOCKS, n)


def affine_checks(params: np.ndarray, output_dtype: np.dtype) -> int:
    """The cheapest sufficient CHECK_* set for single-affine params (see single_affine_params) and output dtype."""
    low, high = params[4], params[5]
    max_out = float(np.finfo(output_dtype).max)
    if bool(np.all(np.abs(low) <= max_out) and np.all(np.abs(high) <= max_out)):
        return CHECK_PRECLIP
    if bool(np.all(low == -np.inf) and np.all(high == np.inf)):
        return CHECK_OUTPUT
    return CHECK_PRECLIP | CHECK_OUTPUT


def status_error(program: Program, code: int, row: int, column: int, value: float) -> KernelError:
    """Turn a backend's status record into the error a client sees."""
    if code == STATUS_INPUT_INF:
        return NonFiniteInputError(row, column, value)
    if code == STATUS_UNKNOWN_CATEGORY:
        source = int(program.slot_source[program.ops[column, OP_AUX]])
        return UnknownCategoryError(row, source, value)
    if code == STATUS_OUTPUT_NONFINITE:
        return NonFiniteOutputError(row, column, int(program.slot_source[column]), value)
    raise AssertionError(f"unknown status code {code}")
