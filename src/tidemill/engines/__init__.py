"""Engines start, watch and stop replicas; nothing above this package knows which one runs.

Engines are created by name with :func:`create_engine` (``local`` runs processes on this
machine, each under a supervisor that records its exit code, Python ones forked from a
warm fork server where they can be: :mod:`~tidemill.engines.warm_start`); importing
this package imports none of them. :func:`replica_env` builds the variables every
replica starts with.
"""

from __future__ import annotations

from tidemill.engines.base import Engine, LaunchPlan, LaunchSpec, Observation, ReplicaHandle
from tidemill.engines.registry import UnknownEngine, create_engine, engine_names
from tidemill.engines.replica_env import ReplicaContext, rank_of, replica_env, world_size

__all__ = [
    "Engine",
    "LaunchPlan",
    "LaunchSpec",
    "Observation",
    "ReplicaContext",
    "ReplicaHandle",
    "UnknownEngine",
    "create_engine",
    "engine_names",
    "rank_of",
    "replica_env",
    "world_size",
]
