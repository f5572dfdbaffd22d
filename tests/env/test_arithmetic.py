"""Tests of Arithmetic-v0: codec, problem generation, solution format, verifier and env contract."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepgrpo_env.arithmetic import (
    MAX_VALUE,
    RETRACT,
    ArithmeticEnv,
    ArithmeticSource,
    ArithmeticVectorEnv,
    ArithmeticVerifier,
    CharCodec,
    Expression,
    corrupt_solution,
    default_limits,
    extract_answer,
    parse_expression,
    solution_text,
)
from deepgrpo_env.codec import Codec
from deepgrpo_env.state import EnvState

CODEC = CharCodec()
EOS = CODEC.eos_token_id


def reference_value(expr: Expression) -> tuple[int, list[int]]:
    """Independent evaluator: products of each term first, then the signed terms left to right.

    Returns the value and every intermediate result (partial products, running sums).
    """
    terms: list[tuple[int, int]] = []  # (sign, product)
    seen: list[int] = []
    sign, product = 1, expr.operands[0]
    for op, x in zip(expr.ops, expr.operands[1:]):
        if op == "*":
            product *= x
            seen.append(product)
        else:
            terms.append((sign, product))
            sign, product = (1 if op == "+" else -1), x
    terms.append((sign, product))
    total = terms[0][1]
    for s, p in terms[1:]:
        total += s * p
        seen.append(total)
    return total, seen


def drive(env: ArithmeticEnv, text: str, index: int) -> tuple[float, bool, bool, dict]:
    """Writes ``text`` then EOS into ``env`` on problem ``index``; returns the last step's outputs."""
    env.reset(options={"problem_index": index})
    actions = [*CODEC.encode(text), EOS]
    for k, a in enumerate(actions):
        _, reward, terminated, truncated, info = env.step(a)
        if k < len(actions) - 1:
            assert (reward, terminated, truncated) == (0.0, False, False)
    return float(reward), terminated, truncated, info


# -- codec ------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=CharCodec.alphabet, max_size=80))
def test_codec_round_trip(text):
    ids = CODEC.encode(text)
    assert len(ids) == len(text) and all(3 <= i < CODEC.vocab_size for i in ids)
    assert CODEC.decode(ids) == text


def test_codec_vocabulary_and_errors():
    assert isinstance(CODEC, Codec)
    assert CODEC.vocab_size == 25 < 48 and len(set(CharCodec.alphabet)) == len(CharCodec.alphabet)
    assert (CODEC.pad_token_id, CODEC.stop_token_ids, CODEC.bos_token_id) == (0, (1,), 2)
    assert CODEC.decode([2, *CODEC.encode("3+4"), 1, 0, 0]) == "3+4"  # specials decode to nothing
    with pytest.raises(ValueError, match="'x'"):
        CODEC.encode("3x4")
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        CODEC.decode([3, 25])
    with pytest.raises(ValueError, match="-1"):
        CODEC.decode([-1])
    assert CODEC.chat_prompt("3+4\nA:") == CODEC.encode("3+4\nA:")
    assert CODEC.chat_prompt("3+4", system="A:") == CODEC.encode("A:\n3+4")
    assert CODEC.fingerprint() == CharCodec().fingerprint() and CODEC.fingerprint().startswith("char-")


# -- problem source -----------------------------------------------------------------------------------
def test_source_is_pure_and_seeded():
    a, b = ArithmeticSource(3, seed=7), ArithmeticSource(3, seed=7)
    indices = [0, 1, 17, 2**31 - 2]
    assert [a.problem(i) for i in indices] == [b.problem(i) for i in reversed(indices)][::-1]
    assert a.problem(5) == a.problem(5)
    other_seed = ArithmeticSource(3, seed=8)
    assert sum(a.problem(i) != other_seed.problem(i) for i in range(20)) >= 15
    assert len({a.problem(i).question for i in range(50)}) >= 45
    assert a.answer_kind == "numeric" and len(a) == 2**31 - 1
    fp = ArithmeticSource(3, seed=7, num_problems=100, max_operand=5).fingerprint()
    assert all(part in fp for part in ("level=3", "seed=7", "n=100", "max_operand=5"))
    assert len({ArithmeticSource(lv).fingerprint() for lv in (1, 2)}) == 2
    assert a.problem(3).id == "arith-L3-s7-m9-3" and a.problem(3).source == "arithmetic"


def test_source_errors():
    with pytest.raises(ValueError, match="`level`"):
        ArithmeticSource(0)
    with pytest.raises(ValueError, match="`seed`"):
        ArithmeticSource(1, seed=-1)
    with pytest.raises(ValueError, match="`max_operand`"):
        ArithmeticSource(1, max_operand=1000)
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        ArithmeticSource(1, num_problems=10).problem(10)


@pytest.mark.parametrize("level", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("max_operand", [3, 9, 20])
def test_generated_answers_are_correct_and_bounded(level, max_operand):
    source = ArithmeticSource(level, seed=1, max_operand=max_operand)
    for i in range(150):
        expr, problem = source.expression(i), source.problem(i)
        assert len(expr.ops) == level and len(expr.operands) == level + 1
        assert all(0 <= x <= max_operand for x in expr.operands)
        assert parse_expression(problem.question) == expr
        value, intermediates = reference_value(expr)
        assert problem.reference == str(value)
        assert all(0 <= v <= MAX_VALUE for v in intermediates)


def test_fallback_generation_stays_in_range():
    # At level 300 uniform draws essentially never stay in range, so the constructive path is used.
    source = ArithmeticSource(300, max_operand=30)
    for i in range(3):
        value, intermediates = reference_value(source.expression(i))
        assert source.problem(i).reference == str(value)
        assert all(0 <= v <= MAX_VALUE for v in intermediates)


def test_parse_expression_rejects_malformed_text():
    for bad in ("", "3+", "+3", "3++4", "3 + 4", "3/4", "(3+4)"):
        with pytest.raises(ValueError, match="Expected an expression"):
            parse_expression(bad)


# -- solution format ------------------------------------------------------------------------------------
def test_solution_text_format():
    assert solution_text("3+4*2") == "4*2=8\n3+8=11\n=11"
    assert solution_text("7") == "=7"
    assert solution_text("9-2-3*2*1+5") == "3*2=6\n6*1=6\n9-2=7\n7-6=1\n1+5=6\n=6"


def replay(expression: str, text: str) -> tuple[int, int]:
    """Reads a solution with the retraction semantics; returns (final answer, number of slips).

    Every ordinary line must compute the next operation of the current (possibly wrong) state; a
    retraction line must restate an earlier line's operation with its correct value, and the
    solution resumes from the state before that line.
    """
    expr = parse_expression(expression)
    values, ops = list(expr.operands), list(expr.ops)
    history: list[tuple[str, list[int], list[str]]] = []  # (operation text, state before it)
    slips = 0
    *lines, last = text.split("\n")
    for line in lines:
        retract = line.startswith(RETRACT)
        body = line[len(RETRACT) :] if retract else line
        lhs, value_text = body.split("=")
        if retract:
            j = max(k for k, (lhs_k, _, _) in enumerate(history) if lhs_k == lhs)
            _, values, ops = history[j]
            del history[j:]
        k = ops.index("*") if "*" in ops else 0
        a, op, b = values[k], ops[k], values[k + 1]
        assert lhs == f"{a}{op}{b}", f"line {line!r} is not the next step of {values}/{ops}"
        correct = a + b if op == "+" else a - b if op == "-" else a * b
        if retract:
            assert int(value_text) == correct
        slips += int(value_text) != correct
        history.append((lhs, values, ops))
        values = [*values[:k], int(value_text), *values[k + 2 :]]
        ops = [*ops[:k], *ops[k + 1 :]]
    assert not ops and last == f"={values[0]}"
    return values[0], slips


@pytest.mark.parametrize("max_delay", [0, 2])
def test_corrupted_solutions_recover(max_delay):
    rng = np.random.default_rng(0)
    verifier = ArithmeticVerifier()
    total_slips = 0
    for level in (1, 2, 4, 6):
        source = ArithmeticSource(level, seed=3)
        for i in range(60):
            problem = source.problem(i)
            text = corrupt_solution(problem, rng, slip_prob=0.3, max_delay=max_delay)
            answer, slips = replay(problem.question, text)
            assert str(answer) == problem.reference and verifier(text, problem.reference) == 1.0
            assert (slips == 0) == (RETRACT not in text)
            total_slips += slips
            if slips == 0:
                assert text == solution_text(problem)
    assert total_slips > 50
    assert corrupt_solution("3+4*2", rng, slip_prob=0.0) == solution_text("3+4*2")
    with pytest.raises(ValueError, match="slip_prob"):
        corrupt_solution("3+4", rng, slip_prob=1.5)


def test_delayed_correction_writes_wrong_branch():
    rng = np.random.default_rng(1)
    texts = [corrupt_solution("3+4*2-1", rng, slip_prob=1.0, max_delay=2) for _ in range(40)]
    # A correction that is not on the line right after its slip means the wrong branch continued.
    assert any(not t.split("\n")[1].startswith(RETRACT) for t in texts)
    assert all(replay("3+4*2-1", t)[0] == 10 for t in texts)


# -- verifier -------------------------------------------------------------------------------------------
def test_verifier_scores():
    v = ArithmeticVerifier()
    assert v.inline_safe is True
    assert v("4*2=8\n3+8=11\n=11", "11") == 1.0
    assert v("4*2=8\n3+8=11\n=12", "11") == 0.0  # the last "=" decides
    assert v("=11", "11") == 1.0 and v("=011", "11") == 1.0 and v("=11\n", "11") == 1.0
    assert v("=-3", "-3") == 1.0 and v("=3", "-3") == 0.0 and v("=-0", "0") == 1.0
    assert v("", "11") == 0.0 and v("11", "11") == 0.0 and v("3+8=", "11") == 0.0
    assert v("= 11", "11") == 0.0 and v("=1" + "1" * 10_000, "11") == 0.0
    assert extract_answer("a=5=7xyz") == "7" and extract_answer("=") is None
    with pytest.raises(ValueError, match="integer reference"):
        v("=1", "1/2")
    assert pickle.loads(pickle.dumps(v))("=1", "1") == 1.0


# -- environments ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [1, 2, 3, 4, 6, 8])
def test_reference_solutions_earn_reward_one(level):
    env = ArithmeticEnv(level=level, seed=2)
    prompt_budget, response_budget = default_limits(level)
    assert env.limits.max_prompt_tokens == prompt_budget
    for index in (0, 1, 2, 99):
        problem = env.source.problem(index)
        reward, terminated, truncated, info = drive(env, solution_text(problem), index)
        assert (reward, terminated, truncated) == (1.0, True, False)
        assert info["correct"] is True and info["response"] == solution_text(problem)
        # the budget also fits one slip and its correction
        assert len(solution_text(problem)) + 1 + 2 * 12 + len(RETRACT) <= response_budget


def test_corrupted_and_wrong_solutions_through_env():
    env = ArithmeticEnv(level=4, max_response_tokens=256)
    rng = np.random.default_rng(5)
    for index in range(10):
        problem = env.source.problem(index)
        text = corrupt_solution(problem, rng, slip_prob=0.5, max_delay=1)
        assert drive(env, text, index)[:3] == (1.0, True, False)
        wrong = solution_text(problem).rsplit("=", 1)[0] + f"={int(problem.reference) + 1}"
        reward, terminated, _, info = drive(env, wrong, index)
        assert (reward, terminated, info["correct"]) == (0.0, True, False)


def test_prompt_and_budget():
    env = ArithmeticEnv(level=2, max_operand=20)
    obs, info = env.reset(seed=0)
    p = info["prompt_length"]
    assert CODEC.decode(obs["input_ids"][:p].tolist()) == info["question"] + "\nA:"
    assert p <= env.limits.max_prompt_tokens == default_limits(2, 20)[0] == 2 * 3 + 2 + 3
    assert env.action_space == gym.spaces.Discrete(25) and env.level == 2
    env.reset(options={"problem_index": 0})
    for _ in range(env.limits.max_response_tokens - 1):
        assert env.step(CODEC.encode("1")[0])[2:4] == (False, False)
    _, reward, terminated, truncated, info = env.step(CODEC.encode("1")[0])
    assert (reward, terminated, truncated, info["score"]) == (0.0, False, True, 0.0)


def test_gymnasium_and_sb3_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(ArithmeticEnv(level=2), skip_render_check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3 warns about int Boxes that are not images; it must pass
        sb3_check_env(ArithmeticEnv(level=2))


def test_registered_id_and_project_checker():
    import deepgrpo_env  # noqa: F401  (registers the ids)
    from deepgrpo_env.checker import check_reasoning_env

    env = gym.make("Arithmetic-v0", level=2)
    assert isinstance(env.unwrapped, ArithmeticEnv) and env.unwrapped.level == 2
    check_reasoning_env(gym.make("Arithmetic-v0"))
    venv = gym.make_vec("Arithmetic-v0", num_envs=3, level=2)
    assert isinstance(venv, ArithmeticVectorEnv) and venv.num_envs == 3


@settings(max_examples=30, deadline=None)
@given(
    depth=st.integers(min_value=0, max_value=30),
    seed=st.integers(min_value=0, max_value=2**16),
    data=st.data(),
)
def test_snapshot_restore_at_random_depth(depth, seed, data):
    env = ArithmeticEnv(level=2, max_response_tokens=32)
    env.reset(seed=seed)
    actions = data.draw(st.lists(st.integers(2, CODEC.vocab_size - 1), min_size=40, max_size=40))
    for a in actions[:depth]:
        env.step(a)
    state = env.snapshot()

    def rollout(e: ArithmeticEnv) -> list:
        out = []
        for a in [*actions[depth:], EOS]:
            obs, r, term, trunc, info = e.step(a)
            out.append((obs["input_ids"].tolist(), r, term, trunc, info.get("response")))
            if term or trunc:
                return out
        raise AssertionError("the episode should have ended")

    first = rollout(env)
    assert state.depth == depth and state.response_ids.tolist() == actions[:depth]
    env.reset_to(state)
    assert rollout(env) == first
    fresh = ArithmeticEnv(level=2, max_response_tokens=32)
    clone = pickle.loads(pickle.dumps(state))
    assert isinstance(clone, EnvState) and clone == state
    fresh.reset_to(clone)
    assert rollout(fresh) == first


def test_vector_env_matches_single_env():
    venv = ArithmeticVectorEnv(3, level=2, autoreset_mode="Disabled")
    singles = [ArithmeticEnv(level=2) for _ in range(3)]
    vobs, vinfo = venv.reset(seed=4)
    texts = []
    for i, env in enumerate(singles):
        obs, info = env.reset(seed=4 + i)
        assert info["problem_id"] == vinfo["problem_id"][i]
        np.testing.assert_array_equal(obs["input_ids"], vobs["input_ids"][i])
        texts.append([*CODEC.encode(solution_text(info["question"])), EOS])
    rewards = np.zeros(3)
    for t in range(max(map(len, texts))):
        actions = np.array([ids[t] if t < len(ids) else EOS for ids in texts])
        _, r, _, _, _ = venv.step(actions)
        rewards += r
    np.testing.assert_array_equal(rewards, [1.0, 1.0, 1.0])
    assert venv.ended.all()
    with pytest.raises(ValueError, match="different configuration"):
        ArithmeticEnv(level=3).reset_to(venv.snapshot([0])[0])
