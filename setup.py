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
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0", "no", "false")


WITH_DEBUG_MODULE = not _flag("EDGECORE_NO_DEBUG_MODULE")

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
        extra_compile_args=["-O2"],
        libraries=["pthread"],
    )


extensions = [_slab("edgecore._slabcache", "ext/slabcache.pyx")]
if WITH_DEBUG_MODULE:
    extensions.append(_slab("edgecore._slabcache_debug", "ext/slabcache_debug.pyx"))
extensions.append(Extension("edgecore._hitpath", ["ext/hitpath.pyx"], extra_compile_args=["-O2"]))

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
