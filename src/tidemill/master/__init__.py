"""The per-job master: membership epochs, failure detection, committed progress.

One process per elastic job (``python -m tidemill.master``, launched by the controller
with role ``master``). Workers reach it at ``TIDEMILL_MASTER_ADDR`` over one persistent
TCP connection each (:mod:`tidemill.wire`); it declares epochs (ranks,
world size, a c10d store prefix), notices a dead worker the moment its connection
closes, and saves its state through a ``StateBackend``
(:mod:`tidemill.master.persistence`) so a restarted master resumes where it was. The
rules live in :mod:`tidemill.master.membership` (pure); the process around them in
:mod:`tidemill.master.server`.

Nothing is imported here, and training processes import only :mod:`tidemill.wire`, so they do
not pay for the master's dependencies.
"""
