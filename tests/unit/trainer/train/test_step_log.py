"""Each logged step of a run is one log line, on the first process only."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from internvl_trainer.train.trainer import StepLog


def test_a_logged_step_is_one_line_on_the_first_process_only(caplog):
    logs = {"loss": 9.90123, "grad_norm": 9.733, "learning_rate": 0.0019481, "epoch": 1, "total_flos": 3.0}
    with caplog.at_level(logging.INFO, logger="internvl_trainer"):
        for first in (True, False):
            state = SimpleNamespace(is_world_process_zero=first, global_step=5, max_steps=30)
            StepLog().on_log(None, state, None, logs=dict(logs))
    assert caplog.messages == ["step 5 of 30: loss 9.901, grad_norm 9.733, learning_rate 0.001948, epoch 1"]


def test_the_progress_bar_stays_only_on_a_terminal_with_plain_logs(monkeypatch):
    from internvl_trainer.train import trainer

    for terminal, chosen, shown in ((True, "plain", True), (False, "plain", False), (True, "json", False)):
        monkeypatch.setattr(trainer.sys.stderr, "isatty", lambda terminal=terminal: terminal)
        monkeypatch.setenv("INTERNVL_LOG_FORMAT", chosen)
        assert trainer.progress_bar_shown() is shown
