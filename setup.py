"""Builds greentap's optional C extension; the metadata is in setup.cfg.

The wire's inner loop in C (greentap/green/_relay.c) and the per-byte work
of software offloads (greentap/core/_offload.c: checksums, cutting and
merging super-frames).  Optional: without a
compiler the build goes on and greentap uses its pure-Python loop
(`tap-forward --version` says which runs, and why).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Always compile: an object file left in build/ by another checkout or
    version would otherwise be reused when it looks newer than the source."""

    def initialize_options(self):
        super().initialize_options()
        self.force = True


setup(
    ext_modules=[
        Extension("greentap.green._relay", ["greentap/green/_relay.c"], optional=True),
        Extension("greentap.core._offload", ["greentap/core/_offload.c"], optional=True),
    ],
    cmdclass={"build_ext": BuildExt},
)
