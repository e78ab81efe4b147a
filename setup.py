"""The optional compiled parts (agent/_sastate.c, agent/_fastpath.c, exporter/_encode.c); the rest is in pyproject.toml.

optional=True: where nothing compiles, the install still succeeds and the Python path runs.
-ffp-contract=off: timestamps must round exactly as Python's `sec + usec * 1e-6` (no fused multiply-add).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("agent._sastate", ["agent/_sastate.c"], optional=True, depends=["agent/sastate.h"],
                             extra_compile_args=["-O2"]),
                   Extension("agent._fastpath", ["agent/_fastpath.c"], optional=True, depends=["agent/sastate.h"],
                             extra_compile_args=["-O2", "-ffp-contract=off"]),
                   Extension("exporter._encode", ["exporter/_encode.c"], optional=True, extra_compile_args=["-O2"])])
