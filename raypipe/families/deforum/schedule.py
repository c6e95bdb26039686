"""Deforum's keyframe schedule language: `frame:(value), frame:(value), ...`.

    "0:(1.0), 30:(1.04)"                          numbers: linear in between, flat outside
    "0: (1.0025+0.002*sin(1.25*3.14*t/30))"       an expression, evaluated at every frame
    "0:(s), 1:(-1), \"max_f-2\":(-1), \"max_f-1\":(s)"   keys may be expressions too

The rules, as Deforum evaluates them (deforum_helpers/animation_key_frames.py):
- A numeric keyframe holds its value at its frame; frames between two known values are
  interpolated linearly; frames before the first and after the last known value hold it flat.
- An expression keyframe is evaluated at every frame from its key up to the frame before the
  next key, with `t` the frame, `max_f` the last frame index and `s` the seed.
- Keys are frame numbers or expressions in `max_f` and `s` (quoted or not), truncated to int;
  a later key for the same frame replaces an earlier one.

Where Deforum fails, raypipe does better:
- No key at frame 0 (Deforum raises): the first value is held flat back to frame 0.
- Commas inside function calls (`where(t>10, 1, 0)`, Deforum splits the schedule at them):
  the schedule is split only at commas outside parentheses.
- Keys past the last frame (Deforum drops them) still shape the curve: a clip cut short
  shows the same values on its frames as the long one.
- `max(a, b)` and `min(a, b)` mean numexpr's `maximum` / `minimum` (numexpr's own max/min
  are reductions, which a per-frame value cannot use).
- Numbers are floats, so `t**-1` works and integer overflow cannot happen.

Safety: numexpr compiles its input with Python's eval, so a schedule is never handed to it
as written. Each key and value is parsed with `ast` and only numbers, the names t / max_f / s,
arithmetic and comparison operators and numexpr's math functions pass; the checked tree is
written back out (literals as floats) and only that text reaches numexpr. Anything else is
rejected with a ScheduleError naming the schedule.
"""

from __future__ import annotations

import ast
import functools
import math
from dataclasses import dataclass

import numpy as np

VALUE_NAMES = frozenset({"t", "max_f", "s"})
KEY_NAMES = frozenset({"max_f", "s"})
# numexpr's math functions, by the number of arguments they take. Its reductions (sum, prod,
# and max / min with one argument), complex and string functions are left out.
FUNCTIONS: dict[str, int] = {
    **{
        name: 1
        for name in (
            "abs",
            "arccos",
            "arccosh",
            "arcsin",
            "arcsinh",
            "arctan",
            "arctanh",
            "ceil",
            "cos",
            "cosh",
            "exp",
            "expm1",
            "floor",
            "log",
            "log10",
            "log1p",
            "log2",
            "round",
            "sign",
            "sin",
            "sinh",
            "sqrt",
            "tan",
            "tanh",
            "trunc",
        )
    },
    **{name: 2 for name in ("arctan2", "copysign", "fmod", "hypot", "maximum", "minimum")},
    "where": 3,
}
ALIASES = {"max": "maximum", "min": "minimum"}
BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr)
UNARY_OPS = (ast.UAdd, ast.USub, ast.Invert)
COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
MAX_EXPRESSION_CHARS = 2000


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message starts with the schedule's name."""


@dataclass(frozen=True)
class Keyframe:
    key: str  # as written (quotes removed)
    key_expr: str  # checked numexpr text of the key
    value: str  # as written
    value_expr: str  # checked numexpr text of the value
    number: float | None  # the value when it is a plain number (interpolated), else None


@dataclass(frozen=True)
class Schedule:
    name: str
    text: str
    keyframes: tuple[Keyframe, ...]

    def values(self, frames: int, seed: int = 0) -> np.ndarray:
        return evaluate(self, frames, seed)


# ---- parsing -------------------------------------------------------------------------------


def _split_top_level(text: str, sep: str, name: str, limit: int | None = None) -> list[str]:
    """Split at `sep` outside parentheses and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ScheduleError(f"{name}: unbalanced ')' at position {i} of {text!r}")
        elif ch == sep and depth == 0 and (limit is None or len(parts) < limit):
            parts.append(text[start:i])
            start = i + 1
    if quote:
        raise ScheduleError(f"{name}: unclosed quote in {text!r}")
    if depth:
        raise ScheduleError(f"{name}: unbalanced '(' in {text!r}")
    parts.append(text[start:])
    return parts


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].strip()
    return text


def check_expression(text: str, names: frozenset[str], name: str, what: str = "value") -> str:
    """The numexpr text of a checked expression; ScheduleError if anything else is in it."""
    source = text.strip()
    if not source:
        raise ScheduleError(f"{name}: empty {what}")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ScheduleError(f"{name}: {what} longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        msg = getattr(err, "msg", None) or type(err).__name__
        raise ScheduleError(f"{name}: {what} {source!r} is not an expression ({msg})") from None
    allowed = ", ".join(sorted(names))

    def bad(node: ast.AST, why: str):
        part = ast.get_source_segment(source, node) or type(node).__name__
        return ScheduleError(
            f"{name}: {why} in {what} {source!r}: {part!r} (a schedule may only use numbers, "
            f"{allowed}, + - * / // % ** comparisons & | ~ and numexpr math functions "
            f"such as sin, cos, where, maximum)"
        )

    def walk(node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Expression):
            return ast.Expression(body=walk(node.body))
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                raise bad(node, "text is not allowed (this schedule takes numbers)")
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise bad(node, "only numbers are allowed as literals")
            try:
                value = float(node.value)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                raise bad(node, "number out of range")
            return ast.Constant(value)
        if isinstance(node, ast.Name):
            if node.id not in names:
                hint = " (keys may use max_f and s, not t)" if node.id == "t" and "t" not in names else ""
                raise bad(node, f"unknown name {node.id!r}{hint}")
            return ast.Name(id=node.id, ctx=ast.Load())
        if isinstance(node, ast.BinOp) and isinstance(node.op, BIN_OPS):
            return ast.BinOp(left=walk(node.left), op=type(node.op)(), right=walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, UNARY_OPS):
            return ast.UnaryOp(op=type(node.op)(), operand=walk(node.operand))
        if isinstance(node, ast.Compare) and all(isinstance(op, COMPARE_OPS) for op in node.ops):
            return ast.Compare(
                left=walk(node.left),
                ops=[type(op)() for op in node.ops],
                comparators=[walk(c) for c in node.comparators],
            )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            func = node.func.id
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise bad(node, "keyword or starred arguments are not allowed")
            if func in ALIASES and len(node.args) == 2:
                func = ALIASES[func]
            if func not in FUNCTIONS:
                raise bad(node, f"unknown function {node.func.id!r}")
            if len(node.args) != FUNCTIONS[func]:
                raise bad(node, f"{func}() takes {FUNCTIONS[func]} argument(s), got {len(node.args)}")
            return ast.Call(func=ast.Name(id=func, ctx=ast.Load()), args=[walk(a) for a in node.args], keywords=[])
        raise bad(node, f"{type(node).__name__.lower()} is not allowed")

    try:
        checked = walk(tree)
        return ast.unparse(ast.fix_missing_locations(checked))
    except RecursionError:
        raise ScheduleError(f"{name}: {what} {source!r} is nested too deeply") from None


def _plain_number(expr: str) -> float | None:
    """The value of a checked expression that is just a (signed) number."""
    node = ast.parse(expr, mode="eval").body
    sign = 1.0
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        sign = -sign if isinstance(node.op, ast.USub) else sign
        node = node.operand
    return sign * float(node.value) if isinstance(node, ast.Constant) else None


def parse(text: str, name: str = "schedule") -> Schedule:
    """Parse and check a schedule (no evaluation). ScheduleError names the schedule."""
    try:
        return _parse_cached(text, name)
    except TypeError:  # not hashable: not a schedule either
        return _parse(text, name)


@functools.lru_cache(maxsize=4096)
def _parse_cached(text, name: str) -> Schedule:
    # Rows of one settings file share their schedules' texts: each is parsed once per process.
    return _parse(text, name)


def _parse(text, name: str) -> Schedule:
    if not isinstance(text, str):
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            text = f"0:({text})"  # a bare number in a settings object: a constant schedule
        else:
            raise ScheduleError(f'{name}: must be a schedule string like "0:(1.0), 30:(1.04)", got {text!r}')
    keyframes = []
    for item in _split_top_level(text, ",", name):
        if not item.strip():
            continue  # tolerate a trailing comma
        parts = _split_top_level(item, ":", name, limit=1)
        if len(parts) != 2:
            raise ScheduleError(f"{name}: {item.strip()!r} is not a keyframe (expected frame:(value))")
        key, value = _unquote(parts[0]), parts[1].strip()
        if not key:
            raise ScheduleError(f"{name}: keyframe {item.strip()!r} has no frame")
        if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
            raise ScheduleError(f"{name}: value {value!r}: text is not allowed (this schedule takes numbers)")
        key_expr = check_expression(key, KEY_NAMES, name, what="key")
        value_expr = check_expression(value, VALUE_NAMES, name, what="value")
        keyframes.append(Keyframe(key, key_expr, value, value_expr, _plain_number(value_expr)))
    if not keyframes:
        raise ScheduleError(f"{name}: empty schedule (expected frame:(value), ...)")
    return Schedule(name, text, tuple(keyframes))


# ---- evaluation ------------------------------------------------------------------------------


def numexpr_values(expr: str, name: str, what: str, t, max_f: int, seed: int) -> np.ndarray:
    """A checked expression evaluated by numexpr at frames `t` (any shape)."""
    import numexpr

    t = np.asarray(t, dtype=np.float64)
    try:
        out = numexpr.evaluate(
            expr, local_dict={"t": t, "max_f": np.float64(max_f), "s": np.float64(seed)}, global_dict={}
        )
    except Exception as err:  # noqa: BLE001 - any numexpr failure is the schedule's fault
        raise ScheduleError(f"{name}: cannot evaluate {what} {expr!r}: {type(err).__name__}: {err}") from None
    return np.broadcast_to(np.asarray(out, dtype=np.float64), t.shape)


def key_frame(key: str, frames: int, seed: int, name: str, checked: str | None = None) -> int:
    """The frame of a key ("30", "max_f/2", '"max_f-1"'), truncated toward zero as Deforum's int()."""
    expr = checked or check_expression(_unquote(key), KEY_NAMES, name, what="key")
    number = _plain_number(expr)  # "30": no numexpr needed
    value = number if number is not None else float(numexpr_values(expr, name, f"key {key!r}", 0.0, frames - 1, seed))
    if not math.isfinite(value) or abs(value) > 1e9:
        raise ScheduleError(f"{name}: key {key!r} is not a usable frame number ({value})")
    return int(value)


def key_frames(schedule: Schedule, frames: int, seed: int = 0) -> list[tuple[int, Keyframe]]:
    """(frame, keyframe) in frame order; a later key for the same frame wins."""
    by_frame = {key_frame(kf.key, frames, seed, schedule.name, kf.key_expr): kf for kf in schedule.keyframes}
    return sorted(by_frame.items())


def evaluate(schedule: Schedule | str, frames: int, seed: int = 0, name: str = "schedule") -> np.ndarray:
    """The schedule's value at each of `frames` frames (float64 array)."""
    if not isinstance(schedule, Schedule):
        schedule = parse(schedule, name)
    if frames < 1:
        raise ScheduleError(f"{schedule.name}: needs at least one frame, got {frames}")
    keys = key_frames(schedule, frames, seed)
    last = frames - 1
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for i, (frame, kf) in enumerate(keys):
        if kf.number is not None:
            xs.append(np.array([frame], dtype=np.float64))
            ys.append(np.array([kf.number]))
            continue
        # An expression holds from its key to the frame before the next key (or the end).
        end = keys[i + 1][0] - 1 if i + 1 < len(keys) else max(last, frame)
        inside = np.arange(max(frame, 0), min(end, last) + 1)
        # Its ends too, so that interpolation towards it uses its value at its own frames.
        t = np.unique(np.concatenate([inside, [frame, end]])).astype(np.float64)
        xs.append(t)
        ys.append(numexpr_values(kf.value_expr, schedule.name, f"value {kf.value!r} (key {kf.key!r})", t, last, seed))
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    values = np.interp(np.arange(frames, dtype=np.float64), x, y)  # flat outside the keys
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ScheduleError(f"{schedule.name}: value at frame {int(bad[0])} is {values[bad[0]]} (not a finite number)")
    return values


def evaluate_expression(expr: str, frame: int, frames: int, seed: int, name: str) -> float:
    """One checked value expression at one frame (used for `weights` in prompts)."""
    checked = check_expression(expr, VALUE_NAMES, name)
    value = float(numexpr_values(checked, name, f"value {expr!r}", float(frame), frames - 1, seed))
    if not math.isfinite(value):
        raise ScheduleError(f"{name}: {expr!r} is {value} at frame {frame} (not a finite number)")
    return value


def plot(values, path: str, title: str = "") -> None:
    """A line chart of per-frame values as a PNG (drawn with Pillow: no plotting dependency)."""
    from PIL import Image, ImageDraw

    values = np.asarray(values, dtype=np.float64)
    width, height, margin = 800, 400, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    left, right, top, bottom = margin, width - 20, 30, height - margin

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(len(values) - 1, 1))
        return x, bottom - (bottom - top) * (v - lo) / (hi - lo)

    draw.rectangle([left, top, right, bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        v = lo + (hi - lo) * frac
        _, y = xy(0, v)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((4, y - 6), f"{v:.4g}", fill="black")
    for i in sorted({0, (len(values) - 1) // 2, len(values) - 1}):
        x, _ = xy(i, lo)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 6, bottom + 8), str(i), fill="black")
    draw.text((left, height - 20), "frame", fill="black")
    if title:
        draw.text((left, 8), title[:110], fill="black")
    points = [xy(i, v) for i, v in enumerate(values)]
    if len(points) == 1:
        points = points * 2
    draw.line(points, fill=(31, 119, 180), width=2)
    for point in points if len(values) <= 60 else []:
        draw.ellipse([point[0] - 2, point[1] - 2, point[0] + 2, point[1] + 2], fill=(31, 119, 180))
    image.save(path)


# ---- text schedules ----------------------------------------------------------------------------
# mask_schedule, noise_mask_schedule and checkpoint_schedule hold text per keyframe:
#     0: ("{video_mask}"), 30: ("{video_mask} & [s3://b/m2.png]")
# As Deforum's (FrameInterpolater with is_single_string): each keyframe's text holds until the
# next one; quotes and parentheses are removed from the text. raypipe splits a keyframe at its
# first ':' only and at commas outside quotes, so a value may hold a URI (Deforum splits at every
# ':' and ','); the first text holds back to frame 0 (Deforum leaves those frames empty).


def _strip_text(value: str) -> str:
    return value.replace("'", "").replace('"', "").replace("(", "").replace(")", "").strip()


def parse_text(text: str, name: str = "schedule") -> tuple[tuple[str, str, str], ...]:
    """(key as written, checked key expression, text) of each keyframe; ScheduleError names the schedule."""
    if not isinstance(text, str):
        raise ScheduleError(f'{name}: must be a schedule string like \'0: ("a"), 30: ("b")\', got {text!r}')
    keyframes = []
    for item in _split_top_level(text, ",", name):
        if not item.strip():
            continue
        key, sep, value = item.partition(":")
        key = _unquote(key)
        if not sep or not key:
            raise ScheduleError(f'{name}: {item.strip()!r} is not a keyframe (expected frame: ("text"))')
        keyframes.append((key, check_expression(key, KEY_NAMES, name, what="key"), _strip_text(value)))
    if not keyframes:
        raise ScheduleError(f'{name}: empty schedule (expected frame: ("text"), ...)')
    return tuple(keyframes)


def evaluate_text(text: str, frames: int, seed: int = 0, name: str = "schedule") -> list[str]:
    """The text in effect at each of `frames` frames."""
    by_frame = {key_frame(key, frames, seed, name, expr): value for key, expr, value in parse_text(text, name)}
    keys = sorted(by_frame.items())
    out, current = [], keys[0][1]
    index = 0
    for frame in range(frames):
        while index < len(keys) and keys[index][0] <= frame:
            current = keys[index][1]
            index += 1
        out.append(current)
    return out
