"""Importing this loads the runtime's compiled kernels: the warm-start fork server does,
so every replica it forks has them.

numba loads a cached kernel at its first call, and the first load in a process sets
up LLVM: 0.4-0.5 s on the 2-core development VM. The runtime's first call is the
first snapshot of ``ElasticState``, which a worker takes before it registers with its
job master, so each forked worker paid that before it could join: a scale-out from 2
to 4 workers took 1.28 s from the request to the first step at 4, 0.6 s of it between
the new workers' model being built and their registration.
"""

from __future__ import annotations

from tidemill.runtime._stream_copy import load_kernel

load_kernel()
