"""Build of vring's C core: one Cython extension, compiled with warnings on; a failed compile fails the build.

``VRING_DEBUG=1`` builds with assertions, -O0 -g and Cython's bounds checks for debugging the core.
"""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("VRING_DEBUG", "") not in ("", "0")
compile_args = ["-O0", "-g", "-UNDEBUG"] if debug else ["-O3"]
# The engine reads shared memory through differently typed pointers on purpose: no strict aliasing.
compile_args += ["-fno-strict-aliasing", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
directives = {"language_level": "3", "embedsignature": True}
if debug:
    directives.update(boundscheck=True, wraparound=True, initializedcheck=True)

extensions = [
    Extension(
        "vring._cring",
        ["vring/_cring.pyx"],
        include_dirs=["vring", numpy.get_include()],
        depends=["vring/barrier.h", "vring/_cring.pxd"],
        extra_compile_args=compile_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                       ("VRING_CFLAGS", '"' + " ".join(compile_args) + '"')],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, annotate=debug))
