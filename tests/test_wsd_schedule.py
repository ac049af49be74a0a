"""The warmup-stable-decay schedule: its learning-rate numbers, its config checks, and cosine hashes kept."""

import math

import pytest

from pydantic import ValidationError

from pipeline.config_files import validation_error
from stages.run_config import RunConfig
from stages.schedule import WsdSchedule, cooldown_factor, cooldown_start_step
from stages.train import run_digest

BASE = {"model": {"layers": 2, "width": 64, "heads": 2}, "seq_len": 32, "tokens": 8192, "unique_tokens": 20000, "batch_tokens": 512}


def _config(**optimizer) -> RunConfig:
    return RunConfig.model_validate({**BASE, "optimizer": optimizer})


def test_wsd_warms_up_holds_the_peak_then_cools_down_to_the_floor():
    schedule = WsdSchedule(peak=1e-2, warmup_tokens=1000, total_tokens=10_000, cooldown_start=8000, final_ratio=0.1, shape="linear")
    assert schedule.lr(250) == pytest.approx(2.5e-3)
    assert schedule.lr(1000) == schedule.lr(5000) == schedule.lr(8000) == 1e-2
    assert schedule.lr(9000) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))
    assert schedule.lr(10_000) == pytest.approx(1e-3)


@pytest.mark.parametrize(("shape", "at_quarter"), [("linear", 0.75), ("1-sqrt", 0.5), ("cosine", 0.5 * (1 + math.cos(math.pi / 4)))])
def test_each_cooldown_shape_falls_as_documented(shape, at_quarter):
    assert cooldown_factor(shape, 0.0) == 1.0 and cooldown_factor(shape, 1.0) == pytest.approx(0.0)
    assert cooldown_factor(shape, 0.25) == pytest.approx(at_quarter)
    schedule = WsdSchedule(1.0, 0, 1000, 600, 0.0, shape)
    assert schedule.lr(700) == pytest.approx(at_quarter)


def test_a_run_config_cools_down_over_its_last_fifth_of_steps_by_default():
    config = _config(schedule="wsd", warmup_tokens=1024, lr=1e-3)
    assert config.steps == 16 and cooldown_start_step(16, 0.2) == 13 and config.cooldown_start_step == 13
    rates = [config.schedule().lr(step * 512) for step in range(1, 17)]
    assert rates[:2] == [5e-4, 1e-3] and set(rates[1:13]) == {1e-3}
    assert rates[13] == pytest.approx(1e-3 * (0.1 + 0.9 * (1 - math.sqrt(1 / 3))))
    assert rates[15] == pytest.approx(1e-4)
    # the stable stretch does not depend on D: a run twice as long has the same rates until its own cooldown
    longer = RunConfig.model_validate({**BASE, "tokens": 16384, "optimizer": {"schedule": "wsd", "warmup_tokens": 1024, "lr": 1e-3}})
    assert [longer.schedule().lr(step * 512) for step in range(1, 14)] == rates[:12] + [1e-3]


def test_a_cosine_run_keeps_the_hash_it_had_before_wsd_existed():
    assert run_digest(_config(), "abc") == "200451cd2729f8ca"  # computed before the WSD fields were added
    assert run_digest(_config(cooldown=0.5, cooldown_shape="linear"), "abc") == "200451cd2729f8ca"  # WSD-only fields ignored
    wsd = _config(schedule="wsd", warmup_tokens=1024)
    assert {"schedule", "warmup_tokens", "cooldown", "cooldown_shape"} <= set(wsd.hashed()["optimizer"])
    assert run_digest(wsd, "abc") != run_digest(_config(schedule="wsd", warmup_tokens=1024, cooldown_shape="linear"), "abc")


@pytest.mark.parametrize(("optimizer", "message"), [
    ({"schedule": "wsd"}, "optimizer.warmup_tokens: is required with schedule wsd"),
    ({"schedule": "wsd", "warmup_tokens": 7168}, "optimizer.warmup_tokens: 7168 runs past the cooldown start of a 8192-token run (token 6656)"),
    ({"schedule": "wsd", "warmup_tokens": 512, "cooldown_shape": "sqrt"}, "optimizer.cooldown_shape: 'sqrt' is not allowed"),
    ({"schedule": "wsd", "warmup_tokens": 512, "cooldown": 1.0}, "optimizer.cooldown: 1.0 is not allowed"),
])  # fmt: skip
def test_wsd_settings_are_checked_with_one_line_naming_the_field(optimizer, message):
    with pytest.raises(ValidationError) as caught:
        _config(**optimizer)
    line = str(validation_error(caught.value, RunConfig))
    assert line.startswith(message) and "\n" not in line, line
