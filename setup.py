"""Build of vring's C core: one Cython extension, compiled with warnings on; a failed compile fails the build.

``VRING_DEBUG=1`` builds a debug core: the C macro VRING_DEBUG turns on the assertions of ``vring/_cring/debug.h``
(the queues' invariants, one caller per queue), with -O0 -g and C asserts kept.

``VRING_SANITIZE=1`` builds the core under AddressSanitizer and UndefinedBehaviorSanitizer (-O1 -g, frame pointers
kept for the reports' stacks); a UB report aborts instead of going on, so a test run under it fails. The module then
needs the ASan runtime loaded first: scripts/sanitize.sh builds it and runs the engine tests that way. Combined
with ``VRING_DEBUG=1`` the debug build's -O0 and assertions are kept.

``VRING_FUZZ=1`` builds a core for coverage-guided fuzzing (``fuzz/README.md``): compiled by clang with libFuzzer's
coverage instrumentation (``-fsanitize=fuzzer-no-link``) but not its runtime, which the fuzzing process preloads.

liburing (Debian's liburing-dev) is linked when it is found (pkg-config, else its header), defining
VRING_HAVE_LIBURING for the virtio-blk worker's io_uring path; without it, or with ``VRING_NO_LIBURING=1``, the core
builds without io_uring and the worker falls back to a thread pool at run time.
"""

import os
import shutil
import subprocess
import sysconfig
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



def find_liburing() -> tuple[list[str], list[str]]:
    """(include dirs, library dirs) of liburing, or raises LookupError if it is not installed."""
    if switch("VRING_NO_LIBURING"):
        raise LookupError("VRING_NO_LIBURING is set")
    if shutil.which("pkg-config"):
        found = subprocess.run(["pkg-config", "--cflags-only-I", "--libs-only-L", "liburing"], capture_output=True,
                               text=True)
        if found.returncode == 0:
            flags = found.stdout.split()
            return [f[2:] for f in flags if f.startswith("-I")], [f[2:] for f in flags if f.startswith("-L")]
    for include in ("/usr/include", "/usr/local/include", sysconfig.get_config_var("INCLUDEDIR") or ""):
        if include and os.path.exists(os.path.join(include, "liburing.h")):
            return [include], []
    raise LookupError("liburing.h not found")


libraries: list[str] = []
include_dirs = ["vring", numpy.get_include()]
library_dirs: list[str] = []
try:
    uring_includes, library_dirs = find_liburing()
    include_dirs += uring_includes
    libraries.append("uring")
    macros.append(("VRING_HAVE_LIBURING", "1"))
except LookupError as exc:
    print(f"vring: building without io_uring ({exc}; install liburing-dev)")

extensions = [
    Extension(
        "vring._cring",
        ["vring/_cring.pyx"],
        include_dirs=include_dirs,
        libraries=libraries,
        library_dirs=library_dirs,
        # The hub includes every .pxi; the headers hold the barriers and the debug assertions.
        depends=["vring/_cring.pxd", "vring/barrier.h"] + sorted(glob("vring/_cring/*.pxi") + glob("vring/_cring/*.h")),
        extra_compile_args=compile_args,
        extra_link_args=sanitizer_args,
        define_macros=macros,
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3", "embedsignature": True},
                            annotate=debug))
