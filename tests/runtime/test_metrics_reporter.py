"""The runtime's metric buffer: bounded, never raising into training, refusals counted
and sent with the next batch so the job master can say why."""

from __future__ import annotations

import doctest
from collections.abc import Callable

import numpy
import pytest
import torch

from tidemill.api.metrics import MAX_SCALARS_PER_REPORT
from tidemill.runtime import _metrics
from tidemill.runtime._metrics import Reporter
from tidemill.wire import MAX_LINE_BYTES, Metrics, decode, encode, parse_worker


def sent_through_the_wire(sent: list[Metrics]) -> Callable[[Metrics], bool]:
    def send(message: Metrics) -> bool:
        parsed = parse_worker(decode(encode(message)))  # what the master would read
        assert isinstance(parsed, Metrics)
        sent.append(parsed)
        return True

    return send


def test_reports_go_in_one_batch_with_the_reasons_of_those_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sent: list[Metrics] = []
    reporter = Reporter(flush_s=3600)
    reporter.attach(sent_through_the_wire(sent))
    for step in range(1, 3):
        reporter.report(step, {"loss": 1.0 / step})
    reporter.report(3, {"loss": numpy.float32(1 / 3)})
    reporter.report(3, {"loss": torch.tensor(0.5)})
    reporter.report(4, {"val loss": 1.0})
    reporter.report(4, {"loss": float("nan")})
    reporter.report(5, {"loss": float("nan")})
    reporter.report(-1, {"loss": 1.0})
    reporter.detach()

    [batch] = sent
    assert [report[0] for report in batch.reports] == [1, 2, 3]
    assert batch.reports[2][2] == {"loss": pytest.approx(1 / 3)}
    assert any("loss=tensor(0.5000) is not a number" in r for r in batch.refused or {})
    refused = batch.refused or {}
    assert refused[next(r for r in refused if "'val loss' is not an identifier" in r)] == 1
    assert refused[next(r for r in refused if "loss=nan is not finite" in r)] == 2
    assert any("step -1 is not a non-negative integer" in r for r in refused)
    printed = capsys.readouterr().err
    assert printed.count("loss=nan is not finite") == 1  # said once, counted twice


def test_a_flood_fills_the_buffer_and_the_rest_is_refused_not_queued() -> None:
    sent: list[Metrics] = []
    reporter = Reporter(flush_s=3600, max_pending=100)
    reporter.attach(sent_through_the_wire(sent))
    for step in range(250):
        reporter.report(step, {"loss": 0.5})
    reporter.detach()

    assert sum(len(batch.reports) for batch in sent) == 100
    [(reason, count)] = (sent[-1].refused or {}).items()
    assert count == 150 and "more than 100 reports waiting" in reason


def test_step_times_become_a_report_of_their_own() -> None:
    sent: list[Metrics] = []
    reporter = Reporter(flush_s=3600)
    reporter.attach(sent_through_the_wire(sent))
    for step in range(1, 5):
        reporter.step_took(step, 0.02, samples=32)
    reporter.detach()

    [[step, _, values]] = sent[0].reports
    assert step == 4
    assert values["step_time_s"] == pytest.approx(0.02)
    assert values["samples_per_s"] == pytest.approx(1600)


def test_a_backlog_of_the_widest_reports_goes_in_batches_that_fit_a_wire_line() -> None:
    sent: list[Metrics] = []
    reporter = Reporter(flush_s=3600)
    reporter.attach(sent_through_the_wire(sent))
    widest = {f"{'m' * 62}{i:02d}": 1.0e-300 for i in range(MAX_SCALARS_PER_REPORT)}
    for step in range(1000):
        reporter.report(step, widest)
    reporter.detach()

    assert len(sent) > 1
    assert [r[0] for batch in sent for r in batch.reports] == list(range(1000))
    assert max(len(encode(batch)) for batch in sent) < MAX_LINE_BYTES


def test_the_docstring_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEMILL_MASTER_ADDR", raising=False)
    result = doctest.testmod(_metrics)
    assert result.attempted > 0 and result.failed == 0
