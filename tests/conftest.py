"""Settings for the whole suite, applied before any test module (or process it starts) loads torch.

One OpenMP thread per process: the suite's models are tiny (hidden size 64), where a second
thread buys nothing, and the suite runs the test process beside gateway, provider and checker
processes on two cores. Each torch or OpenBLAS pool spin-waits for its threads between
operations; with more runnable threads than cores every small operation waits for a thread
that is not running (test_verify_comparators: ~22 s alone, 7-8 min beside other load).
A value set by the caller is kept.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
