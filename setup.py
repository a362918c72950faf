"""Build the Cython extensions in ext/ into the edgecore package.

`pip install .` compiles them; `python setup.py build_ext --inplace` does it in a checkout.

Modules:
  edgecore._slabcache        ext/slabcache.pyx: the shared-memory slab cache (production; no test hooks)
  edgecore._slabcache_debug  ext/slabcache_debug.pyx: the same parts (ext/slabcache/*.pxi) plus the _test_*
                             hooks (ext/slabcache/testhooks.pxi); only tests import it
  edgecore._hitpath          ext/hitpath.pyx

The debug module is built on every install, with the same flags as the production one, because CI runs a
plain `pip install -e '.[test,bench]'` and then every test, and the hook tests must not depend on an extra
switch; it costs one more compile and ~1 MB. EDGECORE_NO_DEBUG_MODULE=1 leaves it out (e.g. for a
production image); the tests that need hooks then fail to import it, loudly.

Environment:
  EDGECORE_DEBUG_BUILD=1     every module at -O0 -g3 -UNDEBUG (C asserts on), with Cython's boundscheck and
                             wraparound on where a module does not set them itself (ext/hitpath.pyx does);
                             cdivision stays on: the code relies on C division in nogil functions
  EDGECORE_NO_DEBUG_MODULE=1 do not build edgecore._slabcache_debug

Warnings: everything is compiled with -Wall (Python's CFLAGS add -Wsign-compare); the build is clean, keep
it so (Cython marks its own unused utility code CYTHON_UNUSED, so nothing generated needs silencing).
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0", "no", "false")


DEBUG_BUILD = _flag("EDGECORE_DEBUG_BUILD")
WITH_DEBUG_MODULE = not _flag("EDGECORE_NO_DEBUG_MODULE")

CFLAGS = ["-Wall"] + (["-O0", "-g3", "-UNDEBUG"] if DEBUG_BUILD else ["-O2"])
DIRECTIVES = {
    "boundscheck": DEBUG_BUILD,
    "wraparound": DEBUG_BUILD,
    "cdivision": True,
}
SLAB_DEPENDS = [
    "ext/slabcache.pxd",
    "ext/slabcache_support.h",
    *sorted(os.path.join("ext", "slabcache", f) for f in os.listdir(os.path.join("ext", "slabcache"))),
]


def _slab(name: str, source: str) -> Extension:
    return Extension(
        name,
        [source],
        depends=SLAB_DEPENDS,
        include_dirs=["ext"],
        extra_compile_args=CFLAGS,
        libraries=["pthread"],
    )


extensions = [_slab("edgecore._slabcache", "ext/slabcache.pyx")]
if WITH_DEBUG_MODULE:
    extensions.append(_slab("edgecore._slabcache_debug", "ext/slabcache_debug.pyx"))
extensions.append(Extension("edgecore._hitpath", ["ext/hitpath.pyx"], extra_compile_args=CFLAGS))

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives=DIRECTIVES,
        # cythonize regenerates a .c only when it is older than its sources, not when directives change, so
        # a debug build keeps its own .c files (under build/) instead of leaving ext/*.c built with debug
        # directives for the next production build
        build_dir="build/cython-debug" if DEBUG_BUILD else None,
    ),
)
