"""Targeted mutation testing of deepgrpo's core math and the env's restore path.

Each mutant is one exact source snippet of one file and its replacement: a plausible bug (a sign, a
dropped term, an off-by-one, an ignored option). The script copies the tracked files of the
repository into a temporary directory once, then for each mutant writes the mutated file there, runs
the test files that should notice it (``pytest -x``, with a timeout) and restores the file. A mutant
is *killed* when the tests fail, *survived* when they pass, *timeout* when they run past the limit
(counted as killed: a hang is noticed), *stale* when its snippet is no longer found exactly once
(the source changed: update the mutant) and *invalid* when the mutated file does not compile.

Usage (from the repository root; about 20-40 minutes on two busy cores)::

    python scripts/mutation_run.py                   # every mutant
    python scripts/mutation_run.py --list            # ids, files and what each mutant breaks
    python scripts/mutation_run.py --check           # every snippet still found once (fast)
    python scripts/mutation_run.py --only tree-adv-one deep-lambda-ignored
    python scripts/mutation_run.py --out mutation.json --markdown mutation.md

It exits with status 1 when a mutant survives or is stale, so it can gate CI. The working tree is
never modified. Mutants documented as equivalent (same behaviour, not a test gap) are listed in
``EQUIVALENT`` with the reason and are not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ADV = ("tests/agent/test_advantages.py",)
LOSS = ("tests/agent/test_losses.py", "tests/agent/test_trainer.py::test_aggregations_against_hand_computed_losses",
        "tests/agent/test_trainer.py::test_second_epoch_is_clipped_as_the_formula_says")
SCORE = ("tests/agent/test_vocabulary.py", "tests/agent/test_deep_grpo.py::test_branch_prefix_gets_no_gradient_but_suffix_does",
         "tests/agent/test_erpo.py::test_update_scores_each_row_at_its_temperature_and_the_first_ratio_is_one")
DEEP = ("tests/agent/test_deep_grpo.py",)
TREE = ("tests/agent/test_tree.py",)
ERPO = ("tests/agent/test_erpo.py",)
PIV = ("tests/agent/test_pivots.py",)
UPD = ("tests/agent/test_trainer.py", "tests/agent/test_deep_grpo.py::test_local_loss_weight_scales_the_local_stream",
       "tests/agent/test_tree.py::test_path_rows_give_the_per_path_token_mean_loss")
ENV = ("tests/env/test_env_contract.py", "tests/env/test_vector.py")


@dataclass(frozen=True)
class Mutant:
    """One targeted mutation: ``old`` (found exactly once in ``path``) becomes ``new``."""

    id: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


M = Mutant
MUTANTS: tuple[Mutant, ...] = (
    # -- advantages.py ----------------------------------------------------------------------------
    M("adv-no-centring", "deepgrpo_agent/advantages.py",
      "torch.where(g.valid, rewards - g.mean[g.member_of], torch.zeros_like(rewards))",
      "torch.where(g.valid, rewards, torch.zeros_like(rewards))", ADV, "advantage = R instead of R - mean"),
    M("adv-mean-counts-nan", "deepgrpo_agent/advantages.py",
      "mean = zeros.index_add(0, member_of, filled) / num_valid.clamp_min(1)",
      "mean = zeros.index_add(0, member_of, filled) / torch.bincount(member_of).to(rewards.dtype)", ADV,
      "unscorable samples counted in the group mean"),
    M("adv-std-unbiased", "deepgrpo_agent/advantages.py",
      "std = (variance / g.num_valid.clamp_min(1)).sqrt()",
      "std = (variance / (g.num_valid - 1).clamp_min(1)).sqrt()", ADV, "sample instead of population std"),
    M("adv-batch-scale-ignored", "deepgrpo_agent/advantages.py",
      "        centred = centred / (std + eps)\n", "        centred = centred\n", ADV, "scale='batch' does nothing"),
    M("adv-zero-var-not-exact", "deepgrpo_agent/advantages.py",
      "return torch.where(g.zero_variance[g.member_of], torch.zeros_like(centred), centred)",
      "return centred", ADV, "zero-variance groups not forced to exact 0"),
    M("adv-zero-var-single", "deepgrpo_agent/advantages.py",
      "zero_variance = (num_valid < 2) | (high <= low)", "zero_variance = high <= low", ADV,
      "a group with one valid reward is not zero-variance"),
    M("adv-stats-threshold", "deepgrpo_agent/advantages.py",
      "correct = (g.valid & (rewards >= correct_threshold))", "correct = (g.valid & (rewards > correct_threshold))",
      ADV, "a reward equal to the threshold is not correct"),
    # -- losses.py --------------------------------------------------------------------------------
    M("loss-ratio-sign", "deepgrpo_agent/losses.py", "ratio = torch.exp(logp - old_logp.detach())",
      "ratio = torch.exp(old_logp.detach() - logp)", LOSS, "ratio inverted"),
    M("loss-clip-high-uses-low", "deepgrpo_agent/losses.py",
      "ratio.clamp(1.0 - eps_low, 1.0 + eps_high)", "ratio.clamp(1.0 - eps_low, 1.0 + eps_low)", LOSS,
      "clip-higher ignored in the clipped value"),
    M("loss-clip-mask-high", "deepgrpo_agent/losses.py", "((adv > 0) & (ratio > 1.0 + eps_high))",
      "((adv > 0) & (ratio > 1.0 + eps_low))", LOSS, "upper clip region uses eps_low"),
    M("loss-clip-negative-side", "deepgrpo_agent/losses.py", "((adv < 0) & (ratio < 1.0 - eps_low))",
      "((adv < 0) & (ratio > 1.0 + eps_high))", LOSS, "A < 0 clipped on the wrong side"),
    M("loss-dual-clip-sign", "deepgrpo_agent/losses.py", "cap = -dual_clip * adv", "cap = dual_clip * adv", LOSS,
      "dual clip cap with the wrong sign"),
    M("loss-dual-clip-positive-adv", "deepgrpo_agent/losses.py", "dual = (adv < 0) & (loss > cap)",
      "dual = loss > cap", LOSS, "dual clip also applied to A > 0"),
    M("loss-k3-sign", "deepgrpo_agent/losses.py", "diff = ref_logp.detach() - logp", "diff = logp - ref_logp.detach()",
      LOSS + ("tests/agent/test_trainer.py::test_kl_to_frozen_reference_enters_the_loss_with_its_coefficient",),
      "k3 of the reversed KL"),
    M("loss-k3-minus-one", "deepgrpo_agent/losses.py", "return torch.exp(diff) - diff - 1.0", "return torch.exp(diff) - diff",
      LOSS, "k3 without the -1 (never 0)"),
    M("loss-seqmean-lengths", "deepgrpo_agent/losses.py", "lengths = m.sum(dim=-1).clamp_min(1)",
      "lengths = torch.ones_like(m.sum(dim=-1))", LOSS, "sequence-mean sums instead of averaging each row"),
    M("loss-seqmean-empty-rows", "deepgrpo_agent/losses.py", "return _nonzero(float(mask.bool().any(dim=-1).sum()))",
      "return _nonzero(float(mask.shape[0]))", LOSS, "empty rows counted in the sequence mean"),
    M("loss-drgrpo-constant", "deepgrpo_agent/losses.py", "return _nonzero(float(mask.shape[0] * max_tokens))",
      "return _nonzero(float(mask.bool().sum()))", LOSS, "dr-grpo divides by the token count"),
    M("loss-masked-sum-mask", "deepgrpo_agent/losses.py",
      "    return torch.where(m, values, torch.zeros_like(values)).sum()  # ()",
      "    return values.sum()  # ()", LOSS, "padding positions enter the loss"),
    # -- scoring.py -------------------------------------------------------------------------------
    M("score-gather-off-by-one", "deepgrpo_agent/scoring.py", "pos[i, :n_t] = np.arange(n_c - 1, n_c + n_t - 1)",
      "pos[i, :n_t] = np.arange(n_c, n_c + n_t)", SCORE, "each target predicted from its own position"),
    M("score-vocab-ignored", "deepgrpo_agent/scoring.py",
      "logits = restrict_vocab(head(picked), vocab_size).float()", "logits = head(picked).float()", SCORE,
      "loss normalizes over the padded head (issue 17, bug 1)"),
    M("score-temperature-ignored", "deepgrpo_agent/scoring.py", "    elif temperature != 1.0:\n        logits = logits / temperature\n",
      "    elif temperature != 1.0:\n        logits = logits\n", SCORE, "scalar temperature ignored in the loss"),
    M("score-row-temperature-ignored", "deepgrpo_agent/scoring.py",
      "logits = logits / temperature.to(logits.device, torch.float32)[:, None, None]", "logits = logits", SCORE,
      "ERPO per-row temperatures ignored in the loss"),
    M("score-mask-ignored", "deepgrpo_agent/scoring.py", "    return logp * batch.mask\n", "    return logp\n",
      SCORE + ("tests/agent/test_trainer.py",), "padding positions hold log-probs"),
    M("engine-vocab-ignored", "deepgrpo_agent/engine/hf.py",
      "logits = restrict_vocab(out.logits[:, -1], self.vocab_size).float()",
      "logits = out.logits[:, -1].float()", SCORE, "engine samples from the padded head at prefill"),
    # -- deep_grpo.py -----------------------------------------------------------------------------
    M("deep-truncated-correct", "deepgrpo_agent/deep_grpo.py", "rewards = np.where(branches.truncated, 0.0, rewards)",
      "rewards = np.where(branches.truncated, 1.0, rewards)", DEEP, "truncated branches scored as correct (audit)"),
    M("deep-lambda-ignored", "deepgrpo_agent/deep_grpo.py", "LOCAL_STREAM: self.config.local_loss_weight}",
      "LOCAL_STREAM: 1.0}", DEEP, "lambda ignored (audit)"),
    M("deep-local-filter-removed", "deepgrpo_agent/deep_grpo.py",
      "            local = local.select(np.abs(local.advantages) >= 1e-8)\n", "", DEEP,
      "local stream keeps zero-advantage rows (audit)"),
    M("deep-global-filter-removed", "deepgrpo_agent/deep_grpo.py",
      "            roots = roots.select(np.abs(roots.advantages) >= 1e-8)\n", "", DEEP,
      "global stream keeps zero-advantage rows"),
    M("deep-min-branch-ignored", "deepgrpo_agent/deep_grpo.py",
      "use_local = len(local) > 0 and len(local) >= cfg.min_branch_samples", "use_local = len(local) > 0", DEEP,
      "min_branch_samples ignored (audit)"),
    M("deep-local-baseline-batch", "deepgrpo_agent/deep_grpo.py",
      "adv = (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1)", "adv = (grouped - grouped.mean()).reshape(-1)",
      DEEP, "local advantage against all branches, not the pivot's siblings"),
    M("deep-phi-label", "deepgrpo_agent/deep_grpo.py",
      "succeeded: np.ndarray = np.asarray((grouped > cfg.failure_threshold).any(axis=1))",
      "succeeded: np.ndarray = np.asarray((grouped > cfg.failure_threshold).all(axis=1))", DEEP,
      "P_phi label = all branches succeeded instead of any"),
    M("deep-eligible-successes", "deepgrpo_agent/deep_grpo.py", "else rewards <= cfg.failure_threshold",
      "else rewards > cfg.failure_threshold", DEEP + ("tests/agent/test_learning.py",),
      "pivots taken from successful roots instead of failed ones"),
    M("deep-local-stream-off", "deepgrpo_agent/deep_grpo.py",
      "samples = TrainSamples.concat([roots, local] if use_local else [roots])",
      "samples = TrainSamples.concat([roots])", ("tests/agent/test_learning.py::test_the_local_stream_alone_raises_the_reward_and_nothing_else_does",),
      "local stream switched off (audit item 6: the learning test must notice)"),
    # -- tree.py ----------------------------------------------------------------------------------
    M("tree-adv-one", "deepgrpo_agent/tree.py",
      "adv = segment_advantages(values, leaves, tree.parent, float(rewards.mean()))",
      "adv = np.ones(len(tree))", TREE, "every TreeRL advantage replaced by 1.0 (audit)"),
    M("tree-local-term-dropped", "deepgrpo_agent/tree.py",
      "return ((values - root_value) + (values - v_parent)) / np.sqrt(np.maximum(leaves, 1))",
      "return 2 * (values - root_value) / np.sqrt(np.maximum(leaves, 1))", TREE, "local advantage V(s) - V(parent) dropped"),
    M("tree-no-sqrt", "deepgrpo_agent/tree.py",
      "return ((values - root_value) + (values - v_parent)) / np.sqrt(np.maximum(leaves, 1))",
      "return ((values - root_value) + (values - v_parent)) / np.maximum(leaves, 1)", TREE, "1/|L| instead of 1/sqrt(|L|)"),
    M("tree-root-parent", "deepgrpo_agent/tree.py",
      "v_parent = np.where(parent < 0, root_value, values[np.maximum(parent, 0)])",
      "v_parent = np.where(parent < 0, 0.0, values[np.maximum(parent, 0)])", TREE, "V(root) taken as 0 for top segments"),
    M("tree-values-leaf-only", "deepgrpo_agent/tree.py", "            node = tree.parent[node]\n",
      "            node = -1\n", TREE, "node values count only the leaf's own segment"),
    M("tree-paths-as-segments", "deepgrpo_agent/tree.py",
      'rows = path_samples if self.config.tree_weighting == "paths" else segment_samples',
      "rows = segment_samples", TREE, "paper weighting silently replaced by segment rows (issue 17, item 3)"),
    M("tree-path-adv-leaf-only", "deepgrpo_agent/tree.py",
      "            adv[tree.start[node]:tree.end[node]] = advantages[node]\n            node = int(tree.parent[node])\n",
      "            adv[:] = advantages[node]\n            node = -1\n", TREE, "a path's tokens all get the leaf's advantage"),
    M("tree-forks-lowest-surprisal", "deepgrpo_agent/tree.py", "order = np.argsort(-surprisal[idx], kind=\"stable\")",
      "order = np.argsort(surprisal[idx], kind=\"stable\")", TREE, "EPTree forks at the lowest surprisal"),
    M("tree-allowed-skip-last", "deepgrpo_agent/tree.py", "hi = min(length - skip_last_tokens, stop)",
      "hi = min(length, stop)", TREE, "skip_last_tokens ignored"),
    # -- erpo.py ----------------------------------------------------------------------------------
    M("erpo-double-visit", "deepgrpo_agent/erpo.py",
      "            visits.setdefault(batch.problem_id[rows[0]], []).append(np.asarray(batch.rewards[rows]))\n",
      "            self.tracker.update(batch.problem_id[rows[0]], batch.rewards[rows])\n", ERPO,
      "one tracker update per group: a repeated problem counted twice (issue 17, bug 2)"),
    M("erpo-no-cap", "deepgrpo_agent/erpo.py", "level = min(level + 1, self.max_level)", "level = level + 1", ERPO,
      "raised level not capped (temperature still capped, level grows)"),
    M("erpo-reset-base-decays", "deepgrpo_agent/erpo.py",
      'level = max(level - 1, 0) if self.reset == "decay" else 0', "level = max(level - 1, 0)", ERPO,
      "reset='base' behaves like 'decay'"),
    M("erpo-all-wrong-raises", "deepgrpo_agent/erpo.py", '        elif outcome != "unscorable":\n',
      '        elif outcome == "mixed":\n', ERPO, "all-wrong visits leave the temperature raised"),
    M("erpo-pseudo-sign", "deepgrpo_agent/erpo.py", "            out[scored] = -epsilon\n", "            out[scored] = epsilon\n",
      ERPO, "pseudo-advantage with the wrong sign"),
    M("erpo-pseudo-kept-zero-var", "deepgrpo_agent/erpo.py", "out: np.ndarray = has_signal | given", "out: np.ndarray = has_signal",
      ERPO, "dynamic sampling drops groups that carry the pseudo-advantage"),
    # -- pivots.py --------------------------------------------------------------------------------
    M("piv-ratio-offset", "deepgrpo_agent/pivots.py", "ratios = (np.arange(depths.shape[0]) + 1.0) / t",
      "ratios = np.arange(depths.shape[0]) / t", PIV, "r_i = i / T instead of (i + 1) / T"),
    M("piv-gamma-sign", "deepgrpo_agent/pivots.py", "+ gamma * np.log(ratios)", "- gamma * np.log(ratios)", PIV,
      "depth bias reversed"),
    M("piv-phi-ignored", "deepgrpo_agent/pivots.py", "logq = np.log(np.clip(p_success, 1e-12, None)) + gamma",
      "logq = 0.0 + gamma", PIV, "P_phi ignored in the utility"),
    M("piv-max-depth", "deepgrpo_agent/pivots.py", "keep = depths < max_depth", "keep = depths <= max_depth", PIV,
      "a pivot at the length budget is kept"),
    M("piv-last-segment-candidate", "deepgrpo_agent/pivots.py", "depths = np.concatenate([[0], ends[:-1]])",
      "depths = np.concatenate([[0], ends])", PIV, "the final segment end is a candidate"),
    M("piv-refit-threshold", "deepgrpo_agent/pivots.py",
      "if positives > self.min_per_class and data.shape[0] - positives > self.min_per_class:",
      "if positives > 0 and data.shape[0] - positives > 0:", PIV, "P_phi refit before 10 samples of each class"),
    # -- update.py --------------------------------------------------------------------------------
    M("upd-kl-coef-ignored", "deepgrpo_agent/update.py", "per_token = per_token + cfg.kl_coef * kl",
      "per_token = per_token + kl", UPD, "kl_coef ignored (audit)"),
    M("upd-kl-dropped", "deepgrpo_agent/update.py", "per_token = per_token + cfg.kl_coef * kl", "per_token = per_token",
      UPD, "KL term dropped"),
    M("upd-stream-weight-ignored", "deepgrpo_agent/update.py", "loss = loss + weights[s] * part", "loss = loss + part",
      UPD, "stream weights ignored in the update"),
    M("upd-denominator-microbatch", "deepgrpo_agent/update.py",
      "part = aggregation.numerator(per_token[rows], mask[rows], max_tokens=cfg.max_new_tokens) / denom",
      "part = aggregation(per_token[rows], mask[rows], max_tokens=cfg.max_new_tokens)", UPD,
      "each micro-batch normalized by its own tokens"),
    M("upd-token-advantages-ignored", "deepgrpo_agent/update.py",
      "    if samples.token_advantages is None:\n        return torch.as_tensor(",
      "    if True:\n        return torch.as_tensor(", UPD + TREE, "per-token (path) advantages ignored"),
    M("upd-vocab-not-passed", "deepgrpo_agent/update.py", "return token_logprobs(model, batch, temps, vocab_size=vocab_size)",
      "return token_logprobs(model, batch, temps)", SCORE, "loss path scores over the padded head"),
    # -- the env's restore path -------------------------------------------------------------------
    M("env-restore-flags", "deepgrpo_env/core.py", "        self.terminated[row] = bool(state.terminated)\n",
      "        self.terminated[row] = False\n", ENV, "restore forgets the terminated flag"),
    M("env-restore-rng", "deepgrpo_env/core.py", "        self.rngs[row] = rng\n", "", ENV,
      "restore keeps the current generator"),
    M("env-restore-response", "deepgrpo_env/core.py", "        line[p : p + r] = response\n", "", ENV,
      "restore drops the response tokens"),
    M("env-restore-padding", "deepgrpo_env/core.py", "        line[p + r :] = self.codec.pad_token_id\n", "", ENV,
      "restore leaves stale tokens after the response"),
    M("env-fingerprint-unchecked", "deepgrpo_env/core.py", "        if state.fingerprint != self.fingerprint:\n",
      "        if False:\n", ENV, "foreign states restored"),
    M("env-vector-autoreset", "deepgrpo_env/vector.py", "            self._autoreset[r] = state.done\n",
      "            self._autoreset[r] = False\n", ENV, "restored ended sub-envs not marked for autoreset"),
    M("env-prefix-flags", "deepgrpo_env/state.py",
      "return dataclasses.replace(self, response_ids=view, terminated=False, truncated=False)",
      "return dataclasses.replace(self, response_ids=view)", ENV + ("tests/agent/test_rollout.py",),
      "a prefix state keeps the end flags"),
    M("env-vector-reset-to-rows", "deepgrpo_env/vector.py", "            self.core.restore(r, state, rng)\n",
      "            self.core.restore(0, state, rng)\n", ENV, "every state restored into sub-env 0"),
)

EQUIVALENT: dict[str, str] = {
    "adv-zero-var-single": "A group with one valid reward has min == max, and one with none has min = +inf > "
                           "max = -inf, so `high <= low` already holds for both: `num_valid < 2` is redundant.",
}
"""Mutant id -> why its behaviour is the same as the original's (not run)."""


def _copy_tree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def run_mutant(mutant: Mutant, work: Path, timeout: float, python: str) -> tuple[str, float, str]:
    """Applies ``mutant`` in ``work``, runs its tests and restores the file: (status, seconds, last line)."""
    path = work / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        return "stale", 0.0, f"snippet found {original.count(mutant.old)} times in {mutant.path}"
    mutated = original.replace(mutant.old, mutant.new)
    try:
        compile(mutated, str(path), "exec")
    except SyntaxError as e:
        return "invalid", 0.0, str(e)
    path.write_text(mutated)
    env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
                              cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        lines = [x for x in proc.stdout.splitlines() if x.strip()]
        status = "survived" if proc.returncode == 0 else "killed"
        tail = lines[-1] if lines else proc.stderr.strip()[-200:]
    except subprocess.TimeoutExpired:
        status, tail = "timeout", f"ran past {timeout:.0f} s"
    finally:
        path.write_text(original)
    return status, time.perf_counter() - t0, tail


def markdown(results: Sequence[dict[str, object]]) -> str:
    killed = sum(r["status"] in ("killed", "timeout") for r in results)
    lines = [f"Killed {killed} of {len(results)} mutants ({100 * killed / max(len(results), 1):.0f}%).", "",
             "| mutant | file | breaks | status | s |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| `{r['id']}` | {r['path']} | {r['what']} | {r['status']} | {float(r['seconds']):.0f} |")  # type: ignore[arg-type]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these mutant ids")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="only check that every snippet is found once and compiles")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's test run")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the results table (markdown) here")
    args = parser.parse_args(argv)
    ids = [m.id for m in MUTANTS]
    if len(set(ids)) != len(ids):
        raise SystemExit("Duplicate mutant ids; give every mutant its own id.")
    chosen = [m for m in MUTANTS if args.only is None or m.id in args.only]
    unknown = sorted(set(args.only or ()) - set(ids))
    if unknown:
        raise SystemExit(f"Unknown mutant ids {unknown}; `--list` shows them.")
    if args.list:
        for m in MUTANTS:
            print(f"{m.id:32s} {m.path:32s} {m.what}")
        return 0
    if args.check:
        problems = []
        for m in chosen:
            source = (ROOT / m.path).read_text()
            if source.count(m.old) != 1:
                problems.append(f"{m.id}: snippet found {source.count(m.old)} times in {m.path}")
                continue
            try:
                compile(source.replace(m.old, m.new), m.path, "exec")
            except SyntaxError as e:
                problems.append(f"{m.id}: the mutant does not compile ({e})")
        print("\n".join(problems) or f"{len(chosen)} mutants: every snippet found once, every mutant compiles.")
        return 1 if problems else 0
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="deepgrpo-mutants-") as tmp:
        work = Path(tmp)
        _copy_tree(work)
        for k, m in enumerate(chosen):
            if m.id in EQUIVALENT:
                results.append({"id": m.id, "path": m.path, "what": m.what, "status": "equivalent",
                                "seconds": 0.0, "detail": EQUIVALENT[m.id]})
                continue
            status, seconds, tail = run_mutant(m, work, args.timeout, sys.executable)
            results.append({"id": m.id, "path": m.path, "what": m.what, "status": status, "seconds": seconds,
                            "detail": tail})
            print(f"[{k + 1}/{len(chosen)}] {m.id:32s} {status:9s} {seconds:6.0f} s  {tail}", flush=True)
    table = markdown([r for r in results if r["status"] != "equivalent"])
    print(table)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    if args.markdown:
        args.markdown.write_text(table)
    bad = [r["id"] for r in results if r["status"] in ("survived", "stale", "invalid")]
    if bad:
        print(f"Not killed: {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
