"""Mutation check: plausible bugs, each applied to a copy of the repository, must make the named tests fail.

    python tests/mutation_check.py [--only NAME ...] [--no-baseline] [--list]

For each mutation the tracked (and untracked, not ignored) files are copied to a temporary directory, the one
source edit is applied there, and the named tests run in the copy (PYTHONPATH set to it). KILLED: they failed.
SURVIVED: they passed, so the suite would let that bug through. Before the mutations, the named tests run once
on an unmutated copy (they must pass there, or a KILLED would mean nothing). Exit 1 if any mutation survived,
a snippet is not found exactly once, or the baseline fails.

Add a mutation for each rule a test guards and a newcomer could plausibly break; tests/test_mutation_list.py
checks (fast, in the default suite) that every snippet below still occurs exactly once in its file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Mutation(NamedTuple):
    name: str
    path: str  # relative to the repository root
    snippet: str  # exact source text, occurring exactly once in `path`
    replacement: str
    tests: tuple[str, ...]  # pytest node ids that must fail under the mutation


TRAINER_TESTS = "tests/test_trainer.py::"

MUTATIONS: list[Mutation] = [
    # ----- the list (issue 31) ---------------------------------------------------------------------
    Mutation("rest_em_normaliser_per_micro_batch", "seal_trl/trainer.py",
             'normalizer = inputs["rest_em_kept_tokens"][0].clamp_min(1.0) / self.accelerator.num_processes',
             "normalizer = mask.sum().float().clamp_min(1.0) / self.accelerator.num_processes",
             (TRAINER_TESTS + "test_rest_em_loss_weighs_each_kept_token_alike_whichever_micro_batch_it_is_in",)),
    Mutation("policy_fingerprint_not_reset_on_sync", "seal_trl/inner/engine.py",
             "        self._score_cache.clear()\n        self._policy_version = None\n",
             "        self._score_cache.clear()\n",
             ("tests/test_reward_baseline.py::test_baseline_runs_once_per_context_and_policy_version",)),
    Mutation("gate_earlier_drop_strict", "seal_trl/continual/gate.py",
             "mean_drop <= t.max_earlier_drop,", "mean_drop < t.max_earlier_drop,",
             ("tests/test_continual_gate.py::test_a_zero_threshold_allows_exactly_no_change",)),
    Mutation("gate_worst_earlier_drop_strict", "seal_trl/continual/gate.py",
             "drops[worst] <= t.max_single_earlier_drop,", "drops[worst] < t.max_single_earlier_drop,",
             ("tests/test_continual_gate.py::test_a_zero_threshold_allows_exactly_no_change",)),
    Mutation("gate_perplexity_rise_strict", "seal_trl/continual/gate.py",
             "rise <= max_rise,", "rise < max_rise,",
             ("tests/test_continual_gate.py::test_a_zero_threshold_allows_exactly_no_change",)),
    Mutation("gate_qa_drop_strict", "seal_trl/continual/gate.py",
             "drop <= max_drop,", "drop < max_drop,",
             ("tests/test_continual_gate.py::test_a_zero_threshold_allows_exactly_no_change",)),
    Mutation("stats_missing_dropped_per_method", "seal_trl/stats.py",
             "pairs = [(float(x), float(y)) for x, y in zip(a, b) if not (_is_missing(x) or _is_missing(y))]",
             "pairs = list(zip([float(x) for x in a if not _is_missing(x)], "
             "[float(y) for y in b if not _is_missing(y)]))",
             ("tests/test_stats.py::test_missing_values_drop_their_pair_and_mismatched_lengths_fail",)),
    Mutation("trainer_failure_handling_off", "seal_trl/trainer.py",
             "        if failed.any():", "        if False:",
             (TRAINER_TESTS + "test_failed_self_edits_are_never_kept_and_rank_last_in_training[grpo]",
              TRAINER_TESTS + "test_failed_self_edits_are_never_kept_and_rank_last_in_training[rest_em]")),
    Mutation("rest_em_failed_kept", "seal_trl/trainer.py",
             "else rewards.masked_fill(failed, torch.nan))", "else rewards)",
             (TRAINER_TESTS + "test_failed_self_edits_are_never_kept_and_rank_last_in_training[rest_em]",)),
    Mutation("rest_em_margin_inclusive", "seal_trl/variants.py",
             "eligible &= grouped > margin", "eligible &= grouped >= margin",
             ("tests/test_variants.py::test_rest_em_margin_is_strict",)),
    # ----- more rules worth guarding -----------------------------------------------------------------------
    Mutation("rest_em_loss_at_sampling_temperature", "seal_trl/trainer.py",
             "        if self.temperature != 1.0:", "        if False:",
             (TRAINER_TESTS + "test_rest_em_loss_is_the_nll_at_temperature_one_whatever_the_sampling_temperature"
              "[False]",)),
    Mutation("grpo_log_probs_at_temperature_one", "seal_trl/trainer.py",
             "        if self.variant.uses_grpo_loss:\n            return\n        if self.use_vllm",
             "        if self.use_vllm",
             (TRAINER_TESTS + "test_grpo_log_probs_stay_at_the_sampling_temperature",)),
    Mutation("rest_em_computes_old_log_probs", "seal_trl/trainer.py",
             "if self._generating and not self.variant.uses_grpo_loss and not torch.is_grad_enabled():",
             "if False:",
             (TRAINER_TESTS + "test_rest_em_never_computes_old_log_probs_and_grpo_still_does",)),
    Mutation("rest_em_trains_unkept_rows", "seal_trl/trainer.py",
             'kept = (inputs["advantages"] > 0).nonzero().squeeze(1)',
             'kept = (inputs["advantages"] >= 0).nonzero().squeeze(1)',
             (TRAINER_TESTS + "test_rest_em_m_step_with_accumulation_and_several_steps_per_generation",)),
    Mutation("rest_em_top_k_off_by_one", "seal_trl/variants.py",
             "keep &= rank < top_k", "keep &= rank <= top_k",
             ("tests/test_variants.py::test_rest_em_keeps_best_positive_per_context",)),
    Mutation("grpo_biased_std", "seal_trl/variants.py",
             "var = (centred**2).sum(1, keepdim=True) / (count - 1).clamp_min(1)",
             "var = (centred**2).sum(1, keepdim=True) / count",
             ("tests/test_variants.py::test_grpo_matches_trl_math_and_ignores_nan",)),
    Mutation("failure_ties_lowest_scored", "seal_trl/variants.py",
             "return torch.where(failed, lowest - penalty, grouped).reshape(-1)",
             "return torch.where(failed, lowest, grouped).reshape(-1)",
             ("tests/test_variants.py::test_failed_self_edits_rank_below_every_scored_one",)),
    Mutation("sign_test_one_sided", "seal_trl/stats.py",
             "return min(1.0, 2 * tail / 2**trials)", "return min(1.0, tail / 2**trials)",
             ("tests/test_stats.py::test_sign_test_matches_the_hand_computed_binomial",)),
    Mutation("gate_new_gain_inclusive", "seal_trl/continual/gate.py",
             "gain > t.min_new_gain,", "gain >= t.min_new_gain,",
             ("tests/test_continual_gate.py::test_each_objective_can_refuse_with_a_reason",)),
    # ----- the reward terms (issue 33) ---------------------------------------------------------------------
    Mutation("reward_terms_measured_before_training", "seal_trl/inner/engine.py",
             "            self.reset_adapter(seed)\n",
             "            self.reset_adapter(seed)\n            if measure is not None:\n"
             "                result.measures, measure = self._measure_now(measure, probe), None\n",
             ("tests/test_reward_terms.py::test_forgetting_is_measured_on_the_adapted_model_after_the_same_run",
              "tests/test_reward_terms.py::test_constraints_read_the_adapted_models_greedy_answers")),
    Mutation("reward_terms_batched_measure_reads_slot_0", "seal_trl/inner/batched.py",
             "routing = SlotRouting(slots=torch.tensor([s.index], device=self.slots.device))",
             "routing = SlotRouting(slots=torch.tensor([0], device=self.slots.device))",
             ("tests/test_reward_terms.py::test_the_batched_engine_measures_each_slot_like_a_run_alone",)),
    Mutation("reward_terms_improvement_rewarded", "seal_trl/reward_terms.py",
             "self.forgetting_weight * max(0.0, forgetting)", "self.forgetting_weight * forgetting",
             ("tests/test_reward_terms.py::test_weights_combine_as_documented",)),
    Mutation("reward_terms_measured_at_weight_0", "seal_trl/reward_terms.py",
             "return self.forgetting_weight > 0", "return self.forgetting_weight >= 0",
             ("tests/test_reward_terms.py::test_zero_weights_are_todays_reward_at_todays_cost",)),
]


def _copy_repository(destination: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():  # a deleted, not yet committed file is still listed
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                            cwd=copy, env=env, capture_output=True, text=True)
    lines = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode, lines[-1] if lines else ""  # pytest's summary line


def occurrences(mutation: Mutation, root: Path = ROOT) -> int:
    """How often the mutation's snippet occurs in its file (it must be exactly once)."""
    path = root / mutation.path
    return path.read_text().count(mutation.snippet) if path.is_file() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the named tests")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    chosen = MUTATIONS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTATIONS})
        if unknown:
            parser.error(f"unknown mutation(s) {unknown}; --list shows them")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path}")
        return 0
    bad = [m for m in chosen if occurrences(m) != 1]
    for m in bad:
        print(f"NOT FOUND {m.name}: its snippet occurs {occurrences(m)} times in {m.path} (must be once); update "
              "the mutation in tests/mutation_check.py")
    if bad:
        return 1
    failures = 0
    with tempfile.TemporaryDirectory(prefix="seal-mutation-") as tmp:
        if not args.no_baseline:
            copy = Path(tmp) / "baseline"
            _copy_repository(copy)
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            start = time.monotonic()
            code, last = _run_tests(copy, tests)
            print(f"baseline: {len(tests)} tests {'pass' if code == 0 else 'FAIL'} ({time.monotonic() - start:.0f}s)"
                  f"{'' if code == 0 else ': ' + last}", flush=True)
            if code != 0:
                return 1
            shutil.rmtree(copy)
        for m in chosen:
            copy = Path(tmp) / m.name
            _copy_repository(copy)
            target = copy / m.path
            target.write_text(target.read_text().replace(m.snippet, m.replacement, 1))
            start = time.monotonic()
            code, last = _run_tests(copy, m.tests)
            verdict = "KILLED" if code == 1 else "SURVIVED" if code == 0 else f"ERROR (pytest exit {code})"
            failures += code != 1
            print(f"{verdict:9} {m.name} ({time.monotonic() - start:.0f}s): {last}", flush=True)
            shutil.rmtree(copy)
    print(f"{len(chosen) - failures} of {len(chosen)} mutations killed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
