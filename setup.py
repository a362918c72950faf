"""Build the Cython extensions in ext/ into the edgecore package.

`pip install .` compiles them; `python setup.py build_ext --inplace` does it in a checkout.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "edgecore._slabcache",
        ["ext/slabcache.pyx"],
        depends=["ext/slabcache.pxd", "ext/slabcache_support.h"],
        extra_compile_args=["-O2"],
        libraries=["pthread"],
    ),
    Extension("edgecore._hitpath", ["ext/hitpath.pyx"], extra_compile_args=["-O2"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
