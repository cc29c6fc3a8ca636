"""The file `MlflowClient.log_table` writes for a dict of columns, written without pandas.

MLflow turns the dict into a pandas DataFrame and writes
`to_json(orient="split", index=False, date_format="iso")`. Importing pandas (with numpy) is a
third of `import mlflow` in the writer process, which is the session's critical path after its
last case (docs/performance.md#mlflow-reporting), and a case table holds only scalars: so the
bytes are written here, as pandas' vendored ujson encoder writes them (pandas/_libs/src/vendored/
ujson/lib/ultrajsonenc.c): pandas' dtype for each column, doubles with 10 decimals (`%.10g` out of
[1e-15, 1e16]), NaN and infinities as null, ASCII-only strings with `/` escaped. A column this
module cannot be sure of (another type, an integer beyond what a float holds exactly) returns None
and the caller uses pandas. tests/test_mlflow_faults.py compares both ways byte for byte, on
generated tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["split_table_json"]

_PRECISION = 10  # pandas' to_json default double_precision
_POW10 = float(10**_PRECISION)
_FIXED_MAX, _FIXED_MIN = 1e16 - 1, 1e-15  # ujson's thresholds for its fixed-point format
_EXACT_INT = 2**53  # an integer pandas turns into a float (a column with gaps) stays exact below this
_INT64 = 2**63


def split_table_json(data: Mapping[str, Sequence[Any]]) -> str | None:
    """The text pandas writes for `pd.DataFrame(dict(data))` in split orient without index, or
    None where a column holds something this module does not write as pandas does."""
    columns = list(data)
    encoders = []
    for column in columns:
        encoder = _column_encoder(data[column])
        if encoder is None or not isinstance(column, str):
            return None
        encoders.append(encoder)
    if len({len(data[c]) for c in columns}) > 1:
        return None  # pandas refuses it: let it say so
    rows = zip(*(data[c] for c in columns)) if columns else ()
    body = ",".join("[" + ",".join(enc(value) for enc, value in zip(encoders, row)) + "]" for row in rows)
    return '{"columns":[' + ",".join(map(_string, columns)) + '],"data":[' + body + "]}"


def _column_encoder(values: Sequence[Any]) -> Any:
    """How pandas writes a column's cells: the dtype it infers decides (ints with a gap become
    floats; bools with a gap, or mixed kinds, stay Python objects, each written as itself)."""
    kinds = set()
    gaps = False
    for value in values:
        if value is None or (type(value) is float and math.isnan(value)):
            gaps = True
        elif type(value) is str and not value.isascii() and not _encodable(value):
            return None  # a lone surrogate: pandas fails on it, and says so
        elif type(value) in (bool, int, float, str):
            kinds.add(type(value))
        else:
            return None
    ints = [v for v in values if type(v) is int]
    if kinds == {int} and not gaps:
        return _int if all(-_INT64 <= v < _INT64 for v in ints) else None
    if kinds and kinds <= {int, float} and (float in kinds or gaps):
        return _as_float if all(abs(v) <= _EXACT_INT for v in ints) else None
    if any(abs(v) >= _INT64 for v in ints):
        return None
    return _cell


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int(value: int) -> str:
    return str(value)


def _as_float(value: Any) -> str:
    return "null" if value is None else _double(float(value))


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        return _double(value)
    return _string(value)


def _double(value: float) -> str:
    """ujson's `Buffer_AppendDoubleUnchecked` at pandas' precision, step for step."""
    if math.isnan(value) or math.isinf(value):
        return "null"
    negative = value < 0
    magnitude = -value if negative else value
    if magnitude > _FIXED_MAX or (magnitude != 0.0 and magnitude < _FIXED_MIN):
        return f"%.{_PRECISION}g" % value
    whole = int(magnitude)
    scaled = (magnitude - whole) * _POW10
    frac = int(scaled)
    rest = scaled - frac
    if rest > 0.5 or (rest == 0.5 and (frac == 0 or frac & 1)):
        frac += 1
    if frac >= _POW10:
        frac, whole = 0, whole + 1
    decimals = str(frac).rjust(_PRECISION, "0").rstrip("0") if frac else "0"
    return f"{'-' if negative else ''}{whole}.{decimals}"


def _string(value: str) -> str:
    # ujson with ensure_ascii: Python's escapes, but `/` escaped (no escape sequence holds one)
    # and DEL (0x7f) left as it is
    if "\x7f" in value:
        return '"' + "\x7f".join(_string(part)[1:-1] for part in value.split("\x7f")) + '"'
    return json.dumps(value).replace("/", "\\/")
