"""Replay traces through the scheduler on a virtual clock, and compare policies.

``replay(cluster, trace, policy)`` runs a trace (arrivals, and durations when known)
through a policy, calling it the way the controller calls ``schedule``; ``summarize``
turns the record into JCT, queueing delay, GPU allocation, per-queue slowdown and the
policy's CPU per call. ``allocation_at_demand`` is the FGD paper's packing protocol.
Policies are named in ``POLICIES``: tidemill's ``schedule`` (its default config, and
``tidemill-best-fit`` / ``tidemill-fragmentation`` for each placement scoring) and the
first-fit, best-fit and FIFO baselines. ``tidemill simulate`` is the command line over this.
"""

from tidemill.scheduler.sim.cluster import read_cluster, read_openb_nodes, read_policy
from tidemill.scheduler.sim.errors import SimInputError
from tidemill.scheduler.sim.metrics import summarize
from tidemill.scheduler.sim.packing import allocation_at_demand
from tidemill.scheduler.sim.policies import DEFAULT_POLICIES, POLICIES, Policy
from tidemill.scheduler.sim.replay import Outcome, Replay, replay
from tidemill.scheduler.sim.trace import TraceJob, read_csv_trace, read_openb_pods, read_trace

__all__ = [
    "DEFAULT_POLICIES",
    "POLICIES",
    "Outcome",
    "Policy",
    "Replay",
    "SimInputError",
    "TraceJob",
    "allocation_at_demand",
    "read_cluster",
    "read_csv_trace",
    "read_openb_nodes",
    "read_openb_pods",
    "read_policy",
    "read_trace",
    "replay",
    "summarize",
]
