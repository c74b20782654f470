"""The chat's session plot reads well with no follow-up and with one (issue 26 item 8)."""

from types import SimpleNamespace

import pytest

from sdpo.chat.app import session_plot


def _engine(rows, loss="policy_gradient"):
    store = SimpleNamespace(interactions=lambda *a, **k: rows)
    return SimpleNamespace(store=store, cfg=SimpleNamespace(loss=loss))


def _row(abs_mean, mean, loss=None, status="applied"):
    return {"signal_abs_mean": abs_mean, "signal_mean": mean, "loss": loss, "status": status}


def _integer_ticks(ax):
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    return ticks and all(float(t).is_integer() for t in ticks)


def test_empty_session_has_sensible_axes_and_says_why():
    fig = session_plot(_engine([]))
    a, b = fig.axes
    assert a.get_xlim() == (0.5, 5.5) and _integer_ticks(b)
    assert a.get_ylim() == (0, 1) and b.get_ylim() == (-1, 1)  # not ±0.05 around nothing
    assert any("no follow-ups yet" in t.get_text() for t in a.texts)


@pytest.mark.parametrize("loss", ["policy_gradient", "topk_distillation"])
def test_one_follow_up_has_integer_ticks_and_a_real_scale(loss):
    fig = session_plot(_engine([_row(0.031, -0.004, loss=0.25)], loss=loss))
    a, b = fig.axes
    assert _integer_ticks(b)  # not 0.945 ... 1.050
    assert a.get_ylim()[0] == 0 and a.get_ylim()[1] == pytest.approx(0.031 * 1.15)
    if loss == "policy_gradient":
        assert b.get_ylim() == pytest.approx((-0.0046, 0.0046))
    else:
        assert b.get_ylim() == pytest.approx((0.125, 0.375))


def test_many_follow_ups_keep_every_point_in_view():
    rows = [_row(0.01 * i, 0.002 * (-1) ** i) for i in range(1, 9)]
    a, b = session_plot(_engine(rows)).axes
    assert a.get_xlim() == (0.5, 8.5) and a.get_ylim()[1] >= 0.08 and _integer_ticks(b)
