"""espmeter agent: capture, decode, meter ESP sequence numbers, pair SAs, schedule exports."""

import os

# numpy's BLAS would start a thread pool at import; espmeter does no linear algebra, and privileges
# can only be dropped (capset is per thread) while the process has a single thread.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
