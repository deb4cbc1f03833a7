"""``/api/v1/jobs/{name}/metrics`` at the door: bad reports refused with the reason, a job
posting too fast told when to retry, the history bounded, a deleted job's metrics gone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.server.conftest import chatty_job
from tidemill.client import Client
from tidemill.server.limits import METRIC_POST_BURST, Limits
from tidemill.server.runner import ServerRunner

METRICS = "/api/v1/jobs/{}/metrics"


def points(first_step: int, count: int, **values: Any) -> dict[str, Any]:
    return {
        "points": [
            {"replica": "worker-0", "step": step, "time": 1.0 + step, "values": values}
            for step in range(first_step, first_step + count)
        ]
    }


def test_a_bad_name_or_a_non_finite_value_is_refused_naming_it(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    with Client(runner.url) as client:
        client.submit(chatty_job("measured"))
    with httpx.Client(base_url=runner.url) as http:
        bad_name = http.post(METRICS.format("measured"), json=points(1, 1, **{"val loss": 1}))
        # JSON has no NaN; Python's encoder writes it anyway, and the server must refuse it.
        nan = http.post(
            METRICS.format("measured"),
            content=b'{"points": [{"replica": "worker-0", "step": 1, "time": 1.0, '
            b'"values": {"loss": NaN}}]}',
            headers={"Content-Type": "application/json"},
        )
        kept = http.get(METRICS.format("measured")).json()

    assert bad_name.status_code == 422, bad_name.text
    assert "'val loss' is not an identifier" in bad_name.text
    assert nan.status_code == 422, nan.text
    assert "finite" in nan.text.lower() or "nan" in nan.text.lower(), nan.text
    assert kept["items"] == [] and kept["latest"] == []


def test_the_history_is_bounded_in_step_order_and_a_flood_of_posts_is_told_to_wait(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner(Limits(metric_reports_per_job=50, metric_post_rate_per_s=1))
    with Client(runner.url) as client:
        client.submit(chatty_job("measured"))
    with httpx.Client(base_url=runner.url) as http:
        answers = [
            http.post(METRICS.format("measured"), json=points(1 + 10 * i, 10, loss=float(i)))
            for i in range(METRIC_POST_BURST + 5)
        ]
        view = http.get(METRICS.format("measured")).json()
        after = http.get(METRICS.format("measured"), params={"sinceStep": 190}).json()
        with Client(runner.url) as client:
            client.delete("measured")
        gone = http.get(METRICS.format("measured"))

    taken = [i for i, a in enumerate(answers) if a.status_code == 201]
    refused = [a for a in answers if a.status_code == 429]
    assert len(taken) >= METRIC_POST_BURST and refused, [a.status_code for a in answers]
    assert "posts metrics faster than" in refused[0].text
    assert int(refused[0].headers["Retry-After"]) >= 1
    stored = [step for i in taken for step in range(1 + 10 * i, 11 + 10 * i)]
    assert view["kept"] == 50 and [p["step"] for p in view["items"]] == stored[-50:]
    assert [(m["name"], m["step"]) for m in view["latest"]] == [("loss", stored[-1])]
    assert [p["step"] for p in after["items"]] == [s for s in stored[-50:] if s > 190]
    assert gone.status_code == 404
