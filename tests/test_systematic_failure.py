"""check_systematic_failure: faults of the setup stop a reward call; bad self-edits score 0 unless all fail alike."""

import pytest

from seal_trl.inner.jobs import InnerResult
from seal_trl.reward import SystematicInnerFailure, check_systematic_failure


def run(error=None, message=None):
    return InnerResult(score_before=0.0, score_after=None if error else 1.0, reward=0.0, error=error,
                       error_message=message or (f"[{error}] detail" if error else None))


def test_out_of_memory_counts_as_a_fault_and_names_the_settings():
    results = [run("out_of_memory", "CUDA out of memory")] * 3 + [run()]
    with pytest.raises(SystematicInnerFailure, match="3 of 4 inner runs failed \\(3 out_of_memory") as info:
        check_systematic_failure(results, 0.5)
    assert "inner_batch_self_edits" in str(info.value) and "inner_load_in_4bit" in str(info.value)
    check_systematic_failure(results[2:], 0.5)  # 1 of 2 is not over the rate


def test_faults_under_the_rate_pass_and_all_faults_always_stop():
    check_systematic_failure([run("exception"), run(), run()], 0.5)
    with pytest.raises(SystematicInnerFailure, match="1 of 1 inner runs failed"):
        check_systematic_failure([run("exception")], 1.0)


def test_every_self_edit_failing_the_same_way_stops_with_the_knob():
    over = run("over_budget")
    with pytest.raises(SystematicInnerFailure, match="all 4 self-edits .* 'over_budget': .*inner_step_budget"):
        check_systematic_failure([over] * 4, 0.5, [over] * 4)
    with pytest.raises(SystematicInnerFailure, match="'unparseable': the policy writes no usable self-edit"):
        check_systematic_failure([], 0.5, [run("unparseable")] * 4)


def test_bad_self_edits_stay_reward_zero_events():
    over, long = run("over_budget"), run("too_long")
    check_systematic_failure([over] * 3, 0.5, [over] * 3)  # fewer self-edits than the minimum
    check_systematic_failure([over, over, long, over], 0.5, [over, over, long, over])  # not all alike
    check_systematic_failure([over] * 3 + [run()], 0.5, [over] * 3 + [None])  # one ran
    check_systematic_failure([over] * 8, 0.5, [over] * 8, min_uniform_failures=0)  # turned off


def test_every_setting_a_stop_message_names_is_a_sealconfig_field():
    """A message that names a setting the user cannot set is no help: every `inner_*`, `max_*` or `self_edit_*`
    word in the fixes must be a SEALConfig field (inner_gradient_checkpointing was only an InnerLoopConfig one)."""
    import dataclasses
    import re

    from seal_trl.config import SEALConfig
    from seal_trl.inner.preflight import FIT_FIXES
    from seal_trl.reward import _POLICY_OUTPUT_FIX, FAILURE_FIXES

    fields = {f.name for f in dataclasses.fields(SEALConfig)}
    named = set()
    for text in [*FAILURE_FIXES.values(), _POLICY_OUTPUT_FIX, FIT_FIXES]:
        named |= set(re.findall(r"\b(?:inner|max|self_edit)_[a-z_0-9]+", text))
    assert "inner_gradient_checkpointing" in named and "inner_load_in_4bit" in named
    assert named <= fields, sorted(named - fields)
    config = SEALConfig(output_dir="unused", use_cpu=True, inner_gradient_checkpointing=True)
    assert config.inner_loop_config().gradient_checkpointing
