"""Whatever a document holds, loading it either gives a job that round-trips or raises
SpecError whose lines can be sent as UTF-8: never another exception (a 500)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidemill.api.errors import SpecError
from tidemill.api.loader import job_from_document, load_job_text

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
ROLE_FIELDS = ("replicas", "minReplicas", "maxReplicas", "args", "env", "image", "workingDir")
SPEC_FIELDS = ("mode", "queue", "priority", "ttlSecondsAfterFinished", "restartBackoffSeconds")
ROLE = st.fixed_dictionaries(
    {"command": st.just(["x"])},
    optional={
        **{name: VALUES for name in ROLE_FIELDS},
        "resources": st.dictionaries(st.sampled_from(["cpu", "memory", "gpu"]), VALUES),
    },
)
DOCUMENTS = st.fixed_dictionaries(
    {
        "apiVersion": st.just("tidemill/v1"),
        "kind": st.just("TrainingJob"),
        "metadata": st.fixed_dictionaries(
            {"name": st.sampled_from(["ok", "Not-ok", "\ud800"])}, optional={"labels": VALUES}
        ),
        "spec": st.fixed_dictionaries(
            {"roles": st.dictionaries(st.sampled_from(["worker", "chief", "x"]), ROLE)},
            optional={name: VALUES for name in SPEC_FIELDS},
        ),
    }
)
YAML_TEXT = st.text(st.sampled_from(list("ab:-[]{}&*!<>,|\n \t'\"#@?1.eE\\\u00e9\ud800\x00")))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def refused_cleanly(exc: SpecError) -> None:
    for error in exc.errors:
        str(error).encode("utf-8")


@FUZZ
@given(DOCUMENTS)
def test_any_document_loads_or_is_refused_as_spec_error(document: dict[str, Any]) -> None:
    try:
        job = job_from_document(document)
    except SpecError as exc:
        refused_cleanly(exc)
        return
    stored = json.dumps(job.to_document()).encode("utf-8")
    assert job_from_document(json.loads(stored)) == job


@FUZZ
@given(YAML_TEXT)
def test_any_text_parses_or_is_refused_as_spec_error(text: str) -> None:
    try:
        load_job_text(text)
    except SpecError as exc:
        refused_cleanly(exc)
