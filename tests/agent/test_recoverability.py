"""The recoverability probe: its curves and utility table against hand-computed values, and a smoke run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from deepgrpo_agent.recoverability import RecoverabilityConfig, run_probe, summarize, utility_table


def rows_of(trajectories):
    """Position rows from [(ratio, successes, surprisal, entropy, branch_tokens), ...] per trajectory (K = 4)."""
    out = []
    for t, positions in enumerate(trajectories):
        for i, (r, s, sur, ent, tok) in enumerate(positions):
            out.append({"trajectory": t, "candidate": i, "ratio": r, "successes": s, "branches": 4,
                        "surprisal": sur, "entropy": ent, "branch_tokens": tok})
    return out


TWO = rows_of([
    # trajectory 0: root 2/4 (mixed), after segment 1: 4/4 (all succeed), after segment 2: 0/4
    [(1 / 4, 2, 0.1, 0.9, 30.0), (2 / 4, 4, 2.0, 0.1, 20.0), (3 / 4, 0, 0.5, 0.2, 10.0)],
    # trajectory 1: root 0/4, after segment 1: 1/4 (mixed)
    [(1 / 3, 0, 0.3, 0.1, 12.0), (2 / 3, 1, 0.2, 0.5, 6.0)],
])


def test_curves_by_hand():
    s = summarize(TWO, 4)
    idx = s["by_candidate_index"]
    assert idx["positions"] == [2, 2, 1]
    assert idx["p_any"] == [0.5, 1.0, 0.0]
    assert idx["per_branch"] == pytest.approx([0.25, 0.625, 0.0])
    assert idx["mixed"] == [0.5, 0.5, 0.0]
    assert s["p_any"] == pytest.approx(3 / 5) and s["mixed_fraction"] == pytest.approx(2 / 5)
    # right-closed r bins: 0.25, 1/3 -> (0.2, 0.4]; 0.5 -> (0.4, 0.6]; 2/3, 0.75 -> (0.6, 0.8]
    assert s["by_ratio"]["positions"] == [0, 2, 1, 2, 0]


def test_utility_table_by_hand():
    t = utility_table(TWO, 4)
    # root: mixed in trajectory 0 (2/4), not in 1 (0/4) -> 0.5; tokens (30 + 12) / 2
    assert t["root"]["mixed"] == 0.5 and t["root"]["branch_tokens"] == 21.0
    # surprisal: trajectory 0 -> candidate 1 (4/4, not mixed); trajectory 1 -> candidate 0 (0/4) -> 0
    assert t["surprisal"]["mixed"] == 0.0 and t["surprisal"]["any"] == 0.5
    # entropy: trajectory 0 -> root (mixed), trajectory 1 -> candidate 1 (mixed) -> 1.0, tokens (30 + 6) / 2
    assert t["entropy"]["mixed"] == 1.0 and t["entropy"]["mixed_per_kilotoken"] == pytest.approx(1000 / (4 * 18))  # K = 4 branches per pivot
    # uniform: (1/3 + 1/2) / 2
    assert t["uniform"]["mixed"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    # paper with P_phi = 1: Q ~ r^2 -> trajectory 0: (1, 4, 9) / 14 at r = 1/4, 2/4, 3/4; mixed only at the root
    q0 = np.array([1, 4, 9]) / 14
    q1 = np.array([1, 4]) / 5
    assert t["paper-phi1"]["mixed"] == pytest.approx((q0[0] + q1[1]) / 2)
    assert t["oracle"]["mixed"] == 1.0


def test_probe_smoke_writes_its_outputs(tmp_path):
    cfg = RecoverabilityConfig(env_kwargs={"level": 2, "max_operand": 9}, failed=3, branches=2, problems=64,
                               output_dir=str(tmp_path), plots=False)
    summary = run_probe(cfg)
    assert 1 <= summary["trajectories"] <= 3
    with (tmp_path / "positions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["positions"]
    assert all(0 <= int(r["successes"]) <= 2 and r["candidate"] for r in rows)
    assert {int(r["depth"]) for r in rows if r["candidate"] == "0"} == {0}  # candidate 0 is the root
    stored = json.loads((tmp_path / "recoverability.json").read_text())
    assert stored["utilities"].keys() >= {"paper", "surprisal", "entropy", "oracle"}


def test_bad_config_says_what_to_fix():
    with pytest.raises(ValueError, match="branches"):
        RecoverabilityConfig(branches=0)
    with pytest.raises(ValueError, match="segment"):
        RecoverabilityConfig(segment="words")  # type: ignore[arg-type]
