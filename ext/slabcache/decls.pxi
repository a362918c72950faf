# slabcache/decls.pxi -- what every part of the slab cache shares: C library imports, a call's view of one
# shard (sctx) and the reasons a slot dies.
#
# Owns: the cimports from libc/cpython/posix, the few extern declarations Cython lacks, struct sctx and the
# KILL_* reasons.
# Invariants: an sctx holds pointers computed from the mapping base for one call only; it is never stored in
# the mapping (the mapping holds offsets and slot refs, see slabcache.pxd).
# Included by ext/slabcache.pyx and ext/slabcache_debug.pyx after they cimport the layout contract
# (`from slabcache cimport *`), which every part uses: header_t, shard_t, slot_hdr, the SLOT_*/SC_* enums
# and the sc_* helpers of slabcache_support.h.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcpy, memcmp, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from cpython.ref cimport PyObject, Py_XDECREF
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from posix.unistd cimport getpid

from edgecore.errors import CacheError

cdef extern from "<sys/mman.h>":
    int MAP_ANONYMOUS

cdef extern from "Python.h":
    PyObject* _bytes_from "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n)

# A call's view of one shard: base pointers computed once per call (never stored in the mapping).
ctypedef struct sctx:
    char *base
    header_t *h
    shard_t *sh
    char *data
    uint32_t *index
    uint16_t *ghost
    uint8_t *pagedesc
    int no_donor        # a class page_steal must not take a page from in this call (-1: none)

cdef enum:
    KILL_EVICT = 0
    KILL_EXPIRE = 1
    KILL_PURGE = 2      # bytes are zeroed
    KILL_DELETE = 3     # bytes are zeroed
    KILL_REPLACE = 4

