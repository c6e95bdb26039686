"""The Deforum keyframe schedule language (raypipe/families/deforum/schedule.py): each rule checked
against values worked out by hand, the cases where raypipe does better than Deforum, the
`raypipe schedule` command, and that no schedule can run code. No Ray, no models."""

import json
import math
import os

import numpy as np
import pytest

from raypipe.cli import main
from raypipe.families.deforum import schedule as sched
from raypipe.families.deforum.schedule import ScheduleError, evaluate, parse


def values(text, frames, seed=0):
    return evaluate(text, frames, seed).tolist()


# ---- the rules, by hand ---------------------------------------------------------------------


def test_numbers_are_interpolated_linearly():
    # 1.0 at 0, 1.04 at 30: +0.04/30 a frame, so 1.02 at 15 and 1.004 at 3.
    v = evaluate("0:(1.0), 30:(1.04)", 31)
    assert v[0] == 1.0 and v[30] == 1.04
    assert v[15] == pytest.approx(1.02) and v[3] == pytest.approx(1.004)
    assert values("0: (0), 4: (2), 6: (-2)", 7) == pytest.approx([0, 0.5, 1, 1.5, 2, 0, -2])


def test_held_flat_before_the_first_and_after_the_last_key():
    # No key at frame 0 (Deforum raises here): the first value holds back to frame 0.
    v = values("10:(2), 20:(4)", 25)
    assert v[:11] == [2.0] * 11 and v[20:] == [4.0] * 5
    assert v[15] == pytest.approx(3.0) and v[12] == pytest.approx(2.4)
    assert values("2:(5)", 4) == [5.0, 5.0, 5.0, 5.0]


def test_an_expression_is_evaluated_at_every_frame_until_the_next_key():
    # t*2 at frames 0..2 (0, 2, 4), then the number 10 from frame 3 on.
    assert values("0:(t*2), 3:(10)", 6) == [0, 2, 4, 10, 10, 10]
    # A number before an expression is interpolated towards the expression's value at its
    # key: 1 at 0, 3*2 = 6 at 3, so 1 + 5/3 and 1 + 10/3 between; then t*2 to the end.
    assert values("0:(1), 3:(t*2)", 6) == pytest.approx([1, 1 + 5 / 3, 1 + 10 / 3, 6, 8, 10])
    # Deforum's default zoom, by the formula
    v = evaluate("0: (1.0025+0.002*sin(1.25*3.14*t/30))", 31)
    for t in (0, 7, 30):
        assert v[t] == pytest.approx(1.0025 + 0.002 * math.sin(1.25 * 3.14 * t / 30))


def test_variables_t_max_f_and_s():
    # max_f is the last frame index (4 of 5 frames), s the seed.
    assert values("0:(max_f), 2:(s), 3:(t+s)", 5, seed=7) == [4, 4, 7, 10, 11]
    assert values("0:(max_f - t)", 4) == [3, 2, 1, 0]


def test_keys_may_be_expressions_quoted_or_not_and_are_truncated():
    # 11 frames: max_f = 10, keys 0, 5 and 10.
    v = values('0:(0), "max_f/2":(10), max_f:(0)', 11)
    assert v == pytest.approx([0, 2, 4, 6, 8, 10, 8, 6, 4, 2, 0])
    # 120 frames: max_f/4-5 = 119/4 - 5 = 24.75 -> frame 24 (Deforum's int()).
    frames = [f for f, _ in sched.key_frames(parse("0:(0), 'max_f/4-5':(1)"), 120)]
    assert frames == [0, 24]
    # Deforum's default seed_schedule: s at 0, -1 from 1 to max_f-2, s at max_f-1 (and held).
    assert values('0:(s), 1:(-1), "max_f-2":(-1), "max_f-1":(s)', 6, seed=42) == [42, -1, -1, -1, 42, 42]


def test_a_later_key_for_the_same_frame_wins():
    assert values("0:(1), 0:(2)", 2) == [2, 2]
    assert values("0:(1), max_f:(5), 3:(9)", 4) == [1, 1 + 8 / 3, 1 + 16 / 3, 9]


def test_commas_inside_function_calls():
    # Deforum splits the schedule at every comma, breaking these; raypipe only at the top level.
    assert values("0:(where(t>2, 1, 0.5)), 5:(max(t, 7))", 8) == [0.5, 0.5, 0.5, 1, 1, 7, 7, 7]
    assert values("0:(minimum(t, 2)), 4:(hypot(3, 4))", 5) == [0, 1, 2, 2, 5]


def test_keys_past_the_end_still_shape_the_curve():
    # The curve 0 -> 10 over 10 frames, sampled for 5 frames: a short clip shows the same values.
    assert values("0:(0), 10:(10)", 5) == pytest.approx([0, 1, 2, 3, 4])
    assert values("0:(0), 10:(10)", 11)[:5] == values("0:(0), 10:(10)", 5)


def test_forms_deforum_writes():
    assert values("0: (1.0), 2 : ( 3.0 ) ,", 3) == [1, 2, 3]  # spaces, a trailing comma
    assert values("0:1, 2:3", 3) == [1, 2, 3]  # values without parentheses
    assert parse(1.5, "zoom").values(2).tolist() == [1.5, 1.5]  # a bare number in a settings object
    assert values("0:(-0.5), 2:(+0.5)", 3) == [-0.5, 0, 0.5]
    assert values("0:(2**-1), 1:(t**-1)", 3) == [0.5, 1, 0.5]  # floats: no integer-power errors
    assert values("0:(7 // 2 + 7 % 2), 1:((t > 1) & (t < 3))", 4) == [4, 0, 1, 0]


# ---- rejections --------------------------------------------------------------------------------

BAD = {
    "": "empty schedule",
    "0:(1": "unbalanced '('",
    "0:(1))": "unbalanced ')'",
    "abc": "not a keyframe",
    "0:(x)": "unknown name 'x'",
    "t:(1)": "keys may use max_f and s, not t",
    '0:("Euler a")': "text is not allowed",
    '0: "Euler a"': "text is not allowed",
    "0:(sum(t))": "unknown function 'sum'",
    "0:(sin(1, 2))": "sin() takes 1 argument(s), got 2",
    "0:(1e400)": "number out of range",
    "0:(1/0)": "ZeroDivisionError",
    "0:(1/(t-1))": "value at frame 1 is inf",
    "0:(log(t-1))": "not a finite number",
    "0:(9**9**9)": "cannot evaluate",
    "0:(1 if t else 2)": "ifexp is not allowed",
    "0:(t and 1)": "boolop is not allowed",
}


@pytest.mark.parametrize("text,reason", BAD.items())
def test_bad_schedules_are_rejected_naming_the_schedule(text, reason):
    with pytest.raises(ScheduleError) as info:
        evaluate(text, 4, name="deforum.zoom")
    assert str(info.value).startswith("deforum.zoom: ")
    assert reason in str(info.value)


# Attempts to run code through numexpr (which compiles its input with Python's eval).
ATTACKS = [
    "0:(__import__('os').system('touch {sentinel}'))",
    "0:(exec(\"open('{sentinel}', 'w')\"))",
    "0:(open('{sentinel}', 'w'))",
    "0:(t.__class__.__base__.__subclasses__())",
    "0:((lambda: open('{sentinel}', 'w'))())",
    "0:([c for c in ().__class__.__mro__])",
    "0:(sin.__globals__)",
    "0:(t[0])",
    "0:(eval)",
    "0:(getattr(t, 'real'))",
    "__import__('os').system('touch {sentinel}'):(1)",
    '0:(1), \'open("{sentinel}", "w")\':(2)',
    "0:(sin(1)); import os",
    "0:(where(t > 0, __import__('os').getpid(), 1))",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_no_schedule_can_run_code(attack, tmp_path, monkeypatch):
    sentinel = tmp_path / "pwned"
    text = attack.format(sentinel=sentinel)
    seen = []
    import numexpr

    real = numexpr.evaluate
    monkeypatch.setattr(numexpr, "evaluate", lambda ex, *a, **k: (seen.append(ex), real(ex, *a, **k))[1])
    with pytest.raises(ScheduleError) as info:
        evaluate(text, 3, name="deforum.angle")
    assert str(info.value).startswith("deforum.angle: ")
    assert not sentinel.exists()
    # numexpr only ever saw checked arithmetic: numbers, t / max_f / s, operators, math functions.
    words = {w for ex in seen for w in __import__("re").findall(r"[A-Za-z_]\w*", ex)}
    assert words <= {"t", "max_f", "s", *sched.FUNCTIONS}


def test_numexpr_only_sees_the_checked_text(monkeypatch):
    seen = []
    import numexpr

    real = numexpr.evaluate
    monkeypatch.setattr(numexpr, "evaluate", lambda ex, *a, **k: (seen.append(ex), real(ex, *a, **k))[1])
    assert values('0:(max(t, 2)), "max_f":(1e-3*t)', 3) == [2, 2, 0.002]
    # literals as floats (no Python big-int arithmetic), max() as numexpr's maximum()
    assert "maximum(t, 2.0)" in seen and "0.001 * t" in seen and "max_f" in seen


# ---- the command ---------------------------------------------------------------------------------


def test_schedule_command_prints_json(capsys, tmp_path):
    assert main(["schedule", "0:(1.0), 4:(1.04)", "--frames", "6"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx([1.0, 1.01, 1.02, 1.03, 1.04, 1.04])
    assert main(["schedule", "0:(s), 2:(t)", "--frames", "3", "--seed", "5"]) == 0
    assert json.loads(capsys.readouterr().out) == [5, 5, 2]
    plot = tmp_path / "zoom.png"
    assert main(["schedule", "0: (1.0025+0.002*sin(1.25*3.14*t/30))", "--frames", "120", "--plot", str(plot)]) == 0
    from PIL import Image

    image = np.asarray(Image.open(plot).convert("RGB"))
    assert image.shape == (400, 800, 3)
    assert (np.abs(image.astype(int) - [31, 119, 180]).sum(-1) < 30).sum() > 200  # the curve is drawn
    capsys.readouterr()


def test_schedule_command_rejects_bad_schedules(capsys, tmp_path):
    sentinel = tmp_path / "x"
    assert main(["schedule", f"0:(__import__('os').system('touch {sentinel}'))", "--frames", "3"]) == 2
    err = capsys.readouterr().err
    assert "schedule: call is not allowed" in err and not sentinel.exists()
    assert main(["schedule", "0:(1)", "--frames", "0"]) == 2
    assert "at least one frame" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["schedule", "0:(1)"])  # --frames is required: a usage error
    assert info.value.code == 2
    assert not os.path.exists("zoom.png")
