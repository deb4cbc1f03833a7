"""The top-level SDK surface is pinned: adding or removing a name is a decision, not an accident."""

from __future__ import annotations

import tidemill
import tidemill.client


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(tidemill.__all__) == ["Client", "TidemillError", "__version__", "init"]


def test_every_public_name_resolves_to_the_real_object() -> None:
    assert tidemill.Client is tidemill.client.Client
    assert tidemill.TidemillError is tidemill.client.TidemillError
    assert callable(tidemill.init)
    assert tidemill.__version__.count(".") == 2


def test_every_client_error_is_a_tidemill_error() -> None:
    errors = [
        tidemill.client.ServerUnavailable,
        tidemill.client.TimedOut,
        tidemill.client.ApiError,
        tidemill.client.InvalidSpec,
        tidemill.client.NotFound,
        tidemill.client.Conflict,
    ]
    assert all(issubclass(error, tidemill.TidemillError) for error in errors)
    assert all(issubclass(error, tidemill.client.ApiError) for error in errors[3:])
