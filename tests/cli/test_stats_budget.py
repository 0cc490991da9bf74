"""``warppack stats``' budget: the sweep over budgets, the recommended budget, and the default budget."""

from __future__ import annotations

import json

import numpy as np
import pytest

import warppack
from warppack.cli.stats import budget as _budget
from warppack.cli.stats.numbers import compute_stats
from warppack.engine.options import INT32_MAX

LENGTHS = np.array([5, 17, 3, 40, 40, 12, 9, 64, 1, 30, 22, 8, 50, 2, 33, 7], dtype=np.int64)


def test_the_sweep_is_each_strategys_plan_at_each_budget():
    lengths = LENGTHS * 100
    stats = compute_stats(lengths, 320, overlong="split", buffer_size=4)
    sweep = stats.sweep
    assert 320 in sweep.budgets and stats.recommended["max_tokens"] in sweep.budgets
    assert sweep.budgets == sorted(sweep.budgets) and sweep.budgets[-1] >= 16 * lengths.max()
    assert len([b for b in sweep.budgets if 320 < b < lengths.max()]) == _budget.SWEEP_STEPS_BELOW
    assert set(sweep.efficiency) == {"bfd", "ffd", "online"}
    for strategy, curve in sweep.efficiency.items():
        expected = [warppack.plan(lengths, b, strategy=strategy, overlong="split", buffer_size=4).efficiency
                    for b in sweep.budgets]
        assert curve == pytest.approx(expected), strategy
    # the recommendation reads bfd's curve, over the budgets that hold the longest example
    bfd = dict(zip(sweep.budgets, sweep.efficiency["bfd"]))
    assert stats.recommended["sweep"] == [{"max_tokens": b, "efficiency": pytest.approx(e)}
                                          for b, e in bfd.items() if b >= lengths.max()]
    assert stats.recommended == _budget.recommend_budget(lengths, given=320)


def test_sweep_budgets_stay_within_int32():
    budgets = _budget.sweep_budgets(INT32_MAX, 8)
    assert budgets[0] == 8 and budgets[-1] == INT32_MAX
    assert all(b <= INT32_MAX for b in budgets)
    assert _budget.sweep_budgets(100) == sorted({_budget.ROUND_TO * k for k in (2, 3, 4, 6, 8, 12, 16, 24, 32)})


def test_without_max_tokens_the_recommended_budget_is_used(tmp_path, run_cli):
    np.save(tmp_path / "l.npy", LENGTHS)
    code, out, err = run_cli(["stats", tmp_path / "l.npy", "--json", "--no-plot"])
    assert code == 0, err
    result = json.loads(out)
    assert result["max_tokens_given"] is False
    assert result["max_tokens"] == result["recommended"]["max_tokens"]
    assert result["strategies"]["bfd"]["bins"] == warppack.plan(LENGTHS, result["max_tokens"]).num_bins
    assert result["recommended"]["split_alternative"] is None
    code, out, _ = run_cli(["stats", tmp_path / "l.npy", "--no-plot"])
    assert code == 0
    budget = result["max_tokens"]
    assert f"budget: {budget:,} tokens per batch (recommended: the budget below, as no --max-tokens was given)" in out
    assert f"recommended budget: --max-tokens {budget:,}" in out


def test_help_says_max_tokens_defaults_to_the_recommended_budget(capsys):
    from warppack.cli.main import main

    with pytest.raises(SystemExit):
        main(["stats", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "usage: warppack stats [-h] [--max-tokens N]" in out
    assert "default: the recommended budget" in out


def test_the_plot_draws_the_sweep_and_marks_both_budgets(tmp_path, monkeypatch, run_cli):
    """The right panel: one line per strategy (alike ones merged) over the budgets, both budgets marked."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    drawn = []
    save = Figure.savefig

    def keep(figure, *args, **kwargs):
        drawn.append(figure)
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    np.save(tmp_path / "l.npy", LENGTHS)
    code, out, err = run_cli(["stats", tmp_path / "l.npy", "--max-tokens", 32, "--buffer-size", 2,
                              "--plot", tmp_path / "p.png", "--json"])
    assert code == 0, err
    result = json.loads(out)
    sweep = result["budget_sweep"]
    right = drawn[0].axes[1]
    curves = {line.get_label(): line for line in right.get_lines() if len(line.get_xdata()) == len(sweep["max_tokens"])}
    strategies = [name for label in curves for name in label.split(" = ")]
    assert sorted(strategies) == ["bfd", "ffd", "online"]
    for label, line in curves.items():
        assert list(line.get_xdata()) == sweep["max_tokens"]
        assert list(line.get_ydata()) == pytest.approx(sweep["efficiency"][label.split(" = ")[0]], abs=1e-6)
    marks = {line.get_label(): line.get_xdata()[0] for line in right.get_lines() if len(line.get_xdata()) == 2}
    assert marks["budget 32"] == 32
    assert marks[f"recommended {result['recommended']['max_tokens']:,}"] == result["recommended"]["max_tokens"]
    assert right.get_xscale() == "log"


def test_the_plot_of_the_real_stdlib_lengths(shared_data, tmp_path, run_cli):
    """The real data set (1,790 files of CPython's stdlib, SmolLM2 tokens): no budget given, a PNG written."""
    pytest.importorskip("matplotlib")
    lengths = np.load(shared_data / "cpython_stdlib_smollm2_lengths.npy")
    np.save(tmp_path / "stdlib.npy", lengths)
    code, out, err = run_cli(["stats", tmp_path / "stdlib.npy", "--plot", tmp_path / "stdlib"])
    assert code == 0, err
    assert f"plot: {tmp_path / 'stdlib.png'} (--plot, .png added)" in out
    assert (tmp_path / "stdlib.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "stdlib").exists()
    assert f"holds the longest example ({int(lengths.max()):,} tokens)" in out or "no budget from" in out
