"""Build of vring's C core: one Cython extension, compiled with warnings on; a failed compile fails the build.

``VRING_DEBUG=1`` builds a debug core: the C macro VRING_DEBUG turns on the assertions of ``vring/_cring/debug.h``
(the queues' invariants, one caller per queue), with -O0 -g and C asserts kept.

``VRING_SANITIZE=1`` builds the core under AddressSanitizer and UndefinedBehaviorSanitizer (-O1 -g, frame pointers
kept for the reports' stacks); a UB report aborts instead of going on, so a test run under it fails. The module then
needs the ASan runtime loaded first: scripts/sanitize.sh builds it and runs the engine tests that way. Combined
with ``VRING_DEBUG=1`` the debug build's -O0 and assertions are kept.

``VRING_FUZZ=1`` builds a core for coverage-guided fuzzing (``fuzz/README.md``): compiled by clang with libFuzzer's
coverage instrumentation (``-fsanitize=fuzzer-no-link``) but not its runtime, which the fuzzing process preloads.
"""

import os
from glob import glob

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def switch(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


debug = switch("VRING_DEBUG")
sanitize = switch("VRING_SANITIZE")
compile_args = ["-O0", "-g", "-UNDEBUG"] if debug else ["-O1", "-g"] if sanitize else ["-O3"]
# Given to the linker too, which then links the sanitizers' runtimes.
sanitizer_args = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"] if sanitize else []
if sanitize:
    compile_args += sanitizer_args + ["-fno-omit-frame-pointer"]
# The engine reads shared memory through differently typed pointers on purpose: no strict aliasing.
compile_args += ["-fno-strict-aliasing", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
if switch("VRING_FUZZ"):
    os.environ.setdefault("CC", "clang")  # the instrumentation is clang's; setuptools reads CC and LDSHARED later
    os.environ.setdefault("LDSHARED", "clang -shared")
    compile_args += ["-fsanitize=fuzzer-no-link"]
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), ("VRING_CFLAGS", '"' + " ".join(compile_args) + '"')]
if debug:
    macros.append(("VRING_DEBUG", "1"))

extensions = [
    Extension(
        "vring._cring",
        ["vring/_cring.pyx"],
        include_dirs=["vring", numpy.get_include()],
        # The hub includes every .pxi; the headers hold the barriers and the debug assertions.
        depends=["vring/_cring.pxd", "vring/barrier.h"] + sorted(glob("vring/_cring/*.pxi") + glob("vring/_cring/*.h")),
        extra_compile_args=compile_args,
        extra_link_args=sanitizer_args,
        define_macros=macros,
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3", "embedsignature": True},
                            annotate=debug))
