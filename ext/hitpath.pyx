# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The fast paths of the client protocol, in C: fresh plain hits in one call per data_received, and the
byte work of a plain miss (rendering its upstream request, reading a plain response head, writing the stored
response).

Owns: a strict parser for the plainest requests (GET/HEAD, HTTP/1.0 or 1.1, origin-form target without
"%", "#" or dot segments and within max_line, a Host that is a plain authority, no body, no cache-relevant or
framing fields), the primary key of such a request (byte-identical to
edgecore.keys.primary_key, checked by tests), the cache lookup, the freshness check of a FLAG_PLAIN entry,
the response (stored bytes with Age and Cache-Status spliced in after the status line) and the shared
counters of those hits.
Invariants: anything it is not sure of is left to the Python path untouched: `serve` returns how many bytes it
fully answered, and the caller feeds the rest to httptools. It accepts a strict subset of what httptools
accepts (so the two parsers never disagree on where a request ends: no smuggling through the fast path);
it never answers a request that needs policy (Vary markers, no-cache entries, stale entries, entries past the
invalidation lease, conditional or range requests, Authorization, request Cache-Control/Pragma).
Its plain-miss helpers decide nothing either:
parse_response accepts a strict subset of what httptools accepts (anything else: False, httptools reads it),
and policy (in Python) decides whether the response is stored.
Must never: hold a reference into the cache's memory but through a Pinned (a value above large_body comes
from cache.lookup_pinned, sent straight into the client's socket when the transport buffers nothing, else as
views of the shared mapping, pinned until the transport drops them; anything smaller is a private copy),
send around bytes the transport still buffers, or answer out of order (the caller only calls it when no request is in flight and the parser is between messages).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint16_t
from libc.stdio cimport snprintf
from libc.string cimport memchr, memcmp, memcpy


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *tp)
    int CLOCK_REALTIME


cdef int _write_pinned(transport, int fd, bytes pre, pinned, Py_ssize_t start) except -1:
    """`pre`, then the pinned value from `start`. Sent straight into socket `fd` (Pinned.send, one sendmsg:
    the kernel copies what it takes before returning, so the pin need not outlive the call for it) only when
    the transport is open and buffers nothing (so bytes stay in order; an open uvloop transport's socket is
    its own, never a reused descriptor); what the socket did not take goes to the transport as views of the
    mapping (the Pinned's pin lasts until the transport has dropped every view). The Python twin:
    edgecore/protocol.py ClientProtocol.write_pinned."""
    cdef Py_ssize_t sent = 0, npre = PyBytes_GET_SIZE(pre)
    if fd >= 0 and transport.get_write_buffer_size() == 0 and not transport.is_closing():
        sent = pinned.send(fd, pre, start)
        if sent < 0:
            sent = 0  # an error: the transport meets it writing everything
        if sent >= npre + len(pinned) - start:
            return 0
    if sent < npre:
        parts = [pre[sent:] if sent else pre]
        parts.extend(pinned.views(start))
    else:
        parts = pinned.views(start + sent - npre)
    transport.writelines(parts)
    return 0


cdef inline double _now() nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


# Every fact shared with Python comes in at construction (HitPath(..., layout=..., bail_fields=...,
# large_body=..., bounds=...)) from its one Python source: the stored-entry offsets from edgecore.entry, the
# request fields that need the general path from edgecore.context, the histogram bounds from
# edgecore.metrics. Nothing here restates them.
DEF MAX_HOST = 255
DEF MAX_BUCKETS = 32

# RFC 9110 5.6.2 tchar
cdef bint _TCHAR[256]
cdef int _i
for _i in range(256):
    _TCHAR[_i] = (48 <= _i <= 57) or (65 <= _i <= 90) or (97 <= _i <= 122) or _i in b"!#$%&'*+-.^_`|~"


cdef inline char *_put_ll(char *o, long long v) nogil:
    """Write v in decimal at o; -> the end."""
    cdef char tmp[24]
    cdef int n = 0
    if v < 0:
        o[0] = b'-'
        o += 1
        v = -v
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    while n:
        n -= 1
        o[0] = tmp[n]
        o += 1
    return o


cdef inline bint _ieq(const char *p, Py_ssize_t n, const char *lower_word, Py_ssize_t wn) nogil:
    """ASCII case-insensitive comparison of p[:n] with an all-lower-case word."""
    cdef Py_ssize_t i
    cdef char c
    if n != wn:
        return False
    for i in range(n):
        c = p[i]
        if 65 <= c <= 90:
            c = c + 32
        if c != lower_word[i]:
            return False
    return True


cdef inline const char *_strict_name(const char *line, const char *eol) noexcept nogil:
    """A field line whose name is tchar+ right up to its colon: -> the colon; else NULL."""
    cdef const char *colon = line
    while colon < eol and _TCHAR[<unsigned char>colon[0]]:
        colon += 1
    if colon == line or colon >= eol or colon[0] != b':':
        return NULL
    return colon


cdef inline const char *_ows_value(const char *colon, const char *eol, const char **end) noexcept nogil:
    """The value of the field line whose colon and end are given, without surrounding OWS: -> its start,
    and its end in *end."""
    cdef const char *v = colon + 1
    cdef const char *ve = eol
    while v < eol and (v[0] == b' ' or v[0] == b'\t'):
        v += 1
    while ve > v and ((ve - 1)[0] == b' ' or (ve - 1)[0] == b'\t'):
        ve -= 1
    end[0] = ve
    return v


cdef inline bint _clean(const char *v, const char *ve, bint obs_text) noexcept nogil:
    """No control character but HTAB, no DEL, and no byte above 0x7f unless obs_text, in v[:ve]."""
    cdef unsigned char c
    while v < ve:
        c = <unsigned char>v[0]
        if (c < 0x20 and c != 0x09) or c == 0x7f or (c > 0x7f and not obs_text):
            return False
        v += 1
    return True


cdef inline const char *_next_field(const char **q, const char *e, const char **colon, const char **v,
                                    const char **ve) noexcept nogil:
    """The field line at *q of a head serve() has checked (each ends in CRLF, the last one's just before e):
    -> its start, with its colon and trimmed value, and *q past it; NULL at e or on a line without colon."""
    cdef const char *line = q[0]
    cdef const char *eol
    if line >= e:
        return NULL
    eol = <const char *>memchr(line, b'\r', e - line)
    if eol == NULL:
        return NULL
    colon[0] = <const char *>memchr(line, b':', eol - line)
    if colon[0] == NULL:
        return NULL
    v[0] = _ows_value(colon[0], eol, ve)
    q[0] = eol + 2
    return line


cdef class PlainRequest:
    """A plain GET/HEAD that serve() stopped at because nothing is stored for its key (a plain miss): its key,
    where its head starts and ends in the data given to serve(), its keep-alive code (0: close after the
    response; 1: HTTP/1.1 keep-alive; 2: HTTP/1.0 keep-alive, said in the response), HEAD or not, HTTP/1.0 or
    not."""

    cdef readonly bytes key
    cdef readonly Py_ssize_t start, end
    cdef readonly int keep
    cdef readonly bint head_only, http10

    def __repr__(self):
        return (f"PlainRequest(key={self.key!r}, start={self.start}, end={self.end}, keep={self.keep}, "
                f"head_only={self.head_only}, http10={self.http10})")


cdef class HitPath:
    """Per worker: the cache, the key options, and this worker's slot of the shared counters."""

    cdef object _lookup
    cdef object _words          # the shared counters memoryview (kept alive for _w)
    cdef int64_t *_w
    cdef Py_ssize_t _hit_idx, _served_idx, _sum_idx, _bucket_idx, _status_idx
    cdef double _bounds[MAX_BUCKETS]
    cdef int _nbuckets
    cdef Py_ssize_t _max_head
    cdef Py_ssize_t _meta
    cdef Py_ssize_t _off_sl, _off_head_len, _off_fresh_until, _off_birth, _off_status, _off_eflags
    cdef int _e_status, _e_via          # META eflags bits: status line implied, our Via implied
    cdef bytes _status_line, _via_line  # what those bits imply (entry.IMPLIED)
    cdef Py_ssize_t _large
    cdef Py_ssize_t _write_high  # client write buffer bytes above which serve() stops answering (0: never)
    cdef Py_ssize_t _lease_idx   # words index of the invalidation lease deadline (epoch us); -1: no bus
    cdef int _flag_plain
    cdef bytes _prefix          # the key up to the host: tenant and method class
    cdef public bint enabled
    cdef public bint draining
    cdef bint _http11           # of the request _parse saw last
    cdef bytes _hit_status      # the Cache-Status of a fresh hit up to its ttl value (cachestatus's spelling)
    cdef tuple _bail_fields     # lower-case names of request fields that need the general path
    cdef tuple _fetch_drop      # lower-case names never sent upstream on a cache fetch
    cdef Py_ssize_t _max_line   # longest request target (longer: the general path answers 414)
    cdef bint _underscores      # field names with "_" kept (else dropped, as the general path does)
    cdef char *_buf             # scratch for upstream_head (max_head * 2 + 1024 bytes)
    cdef Py_ssize_t _bufsize
    cdef tuple _routes          # (host, suffix, path prefix) a [[routes]] table may match: general path

    def __init__(self, cache, *, words, counter_index, bounds, Py_ssize_t max_head, layout, int flag_plain,
                 bytes key_prefix, bail_fields, fetch_drop, Py_ssize_t large_body, bytes hit_status,
                 Py_ssize_t max_line, bint underscores, Py_ssize_t write_high, implied,
                 Py_ssize_t lease_index=-1,
                 bint enabled=True, routes=()):
        """counter_index: the words' indexes of (hits, served, duration sum in ns, first histogram bucket,
        the 1xx status-class counter: 2xx..5xx follow it);
        bounds: the histogram's upper bounds in seconds (one bucket more counts the rest); layout: the stored
        entry's (META size, statusline_len offset (u16), head_len offset (u32), fresh_until offset (f64),
        birth offset (f64), status offset (u16), eflags offset (u8)), as edgecore.entry defines them; implied:
        entry.IMPLIED, ((eflags bit, status line), (eflags bit, field line)): an entry with the first bit has
        no stored status line (its statusline_len is 0) and that one is written instead; with the second, the
        field line is written after Cache-Status (at most 64 bytes each); hit_status: a fresh hit's
        Cache-Status up to its ttl value, as edgecore.cachestatus spells it; write_high: the client
        transports' write buffer high-water mark (serve() answers no further pipelined hit once the buffer is
        above it); lease_index: the words' index of the invalidation lease deadline (epoch microseconds,
        edgecore.context.lease_index): past it a stored entry is left to the Python path, which revalidates
        it; -1 (no bus): no check; routes: edgecore.routes.Routes.c_table(), (host, suffix, path prefix)
        rows: a request whose host without port (b"": any; suffix: ends with it) and target (a byte prefix)
        fit a row is left to the general path, which applies the route."""
        cdef long long[::1] view = words
        # values longer than large_body come pinned (views of the shared mapping, no copy): cache.lookup_pinned
        self._lookup = cache.lookup_pinned
        self._words = words
        self._w = <int64_t *>&view[0]
        self._hit_idx, self._served_idx, self._sum_idx, self._bucket_idx, self._status_idx = counter_index
        if len(bounds) > MAX_BUCKETS:
            raise ValueError(f"at most {MAX_BUCKETS} histogram bounds")
        self._nbuckets = len(bounds)
        for i, b in enumerate(bounds):
            self._bounds[i] = b
        self._max_head = max_head
        (self._meta, self._off_sl, self._off_head_len, self._off_fresh_until, self._off_birth,
         self._off_status, self._off_eflags) = layout
        if not (self._off_sl + 2 <= self._meta and self._off_head_len + 4 <= self._meta
                and self._off_fresh_until + 8 <= self._meta and self._off_birth + 8 <= self._meta
                and self._off_status + 2 <= self._meta and self._off_eflags + 1 <= self._meta):
            raise ValueError("entry layout offsets outside META")
        ((self._e_status, self._status_line), (self._e_via, self._via_line)) = implied
        if len(self._status_line) > 64 or len(self._via_line) > 64:
            raise ValueError("implied lines longer than 64 bytes")
        self._large = large_body
        if len(hit_status) > 100:
            raise ValueError("hit_status longer than 100 bytes")
        self._hit_status = hit_status
        self._write_high = write_high
        if lease_index >= <Py_ssize_t>len(words):
            raise ValueError("lease_index outside the words")
        self._lease_idx = lease_index
        self._flag_plain = flag_plain
        self._prefix = key_prefix
        self.enabled = enabled
        self.draining = False
        self._bail_fields = tuple(bail_fields)
        self._fetch_drop = tuple(fetch_drop)
        self._max_line = max_line
        self._underscores = underscores
        for row in routes:
            if len(row) != 3 or type(row[0]) is not bytes or type(row[2]) is not bytes:
                raise ValueError("routes rows are (host bytes, suffix bool, path prefix bytes)")
        self._routes = tuple((row[0], bool(row[1]), row[2]) for row in routes)
        self._bufsize = max_head * 2 + 1024
        self._buf = <char *>PyMem_Malloc(self._bufsize)
        if self._buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def facts(self):
        """What it was told at construction (for the test that holds it to the Python sources)."""
        return {
            "layout": (self._meta, self._off_sl, self._off_head_len, self._off_fresh_until, self._off_birth,
                       self._off_status, self._off_eflags),
            "implied": ((self._e_status, self._status_line), (self._e_via, self._via_line)),
            "bounds": tuple(self._bounds[i] for i in range(self._nbuckets)),
            "bail_fields": self._bail_fields,
            "routes": self._routes,
            "fetch_drop": self._fetch_drop,
            "large_body": self._large,
            "max_line": self._max_line,
            "underscores": self._underscores,
            "write_high": self._write_high,
            "lease_index": self._lease_idx,
            "flag_plain": self._flag_plain,
            "hit_status": self._hit_status,
        }

    def key_for(self, bytes head):
        """The primary key the fast path computes for a request head (None when it would not handle it)."""
        cdef int keep = 0, head_only = 0
        return self._parse(PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head), &keep, &head_only)

    cdef object _parse(self, const char *p, Py_ssize_t n, int *keep, int *head_only):
        """p[:n] is one request head without its final CRLFCRLF. -> key bytes, or None to bail."""
        cdef const char *end = p + n
        cdef const char *q
        cdef const char *target
        cdef const char *line
        cdef const char *colon
        cdef const char *v
        cdef const char *ve
        cdef Py_ssize_t tlen, i, hlen = 0
        cdef int minor
        cdef bint http11, conn_close = False, conn_keep = False, have_host = False
        cdef char host[MAX_HOST + 1]
        cdef unsigned char c
        # request line: METHOD SP target SP HTTP/1.x
        if n >= 4 and p[0] == b'G' and p[1] == b'E' and p[2] == b'T' and p[3] == b' ':
            q = p + 4
            head_only[0] = 0
        elif n >= 5 and p[0] == b'H' and p[1] == b'E' and p[2] == b'A' and p[3] == b'D' and p[4] == b' ':
            q = p + 5
            head_only[0] = 1
        else:
            return None
        target = q
        if q >= end or q[0] != b'/':
            return None
        while q < end and q[0] != b' ':
            c = <unsigned char>q[0]
            if c <= 0x20 or c >= 0x7f or c == b'%' or c == b'#':
                return None
            q += 1
        tlen = q - target
        if tlen > self._max_line or _dot_segment(target, tlen):
            return None   # 414, or a path keys.normalise_target rewrites (RFC 3986 5.2.4): the general path
        if end - q < 10 or q[0] != b' ' or q[1] != b'H' or q[2] != b'T' or q[3] != b'T' or q[4] != b'P' \
                or q[5] != b'/' or q[6] != b'1' or q[7] != b'.':
            return None
        if q[8] == b'1':
            http11 = True
        elif q[8] == b'0':
            http11 = False
        else:
            return None
        if q[9] != b'\r':
            return None
        q += 10
        # header fields: name ":" OWS value OWS CRLF, visible ASCII only
        while q < end:
            if q[0] != b'\n':
                return None
            line = q + 1
            q = line
            while q < end and q[0] != b'\r':
                q += 1
            # line[:q-line] is one field line
            colon = _strict_name(line, q)
            if colon == NULL:
                return None
            v = _ows_value(colon, q, &ve)
            if not _clean(v, ve, False):
                return None
            if _ieq(line, colon - line, "host", 4):
                if have_host or ve - v == 0 or ve - v > MAX_HOST:
                    return None
                have_host = True
                hlen = ve - v
                for i in range(hlen):
                    c = <unsigned char>v[i]
                    if c == b'[' or c == b' ' or c == b'\t' or c == b'/' or c == b'?' or c == b'#' \
                            or c == b'@' or c == b'\\':
                        return None   # not an authority: the general path answers 400
                    host[i] = c + 32 if 65 <= c <= 90 else c
            elif _ieq(line, colon - line, "connection", 10):
                if _ieq(v, ve - v, "close", 5):
                    conn_close = True
                elif _ieq(v, ve - v, "keep-alive", 10):
                    conn_keep = True
                else:
                    return None   # Connection-listed fields: the Python path handles them
            else:
                for name in self._bail_fields:
                    if _ieq(line, colon - line, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)):
                        return None
            if q < end:
                q += 1   # now at '\n'
                if q >= end:
                    return None
        if not have_host:
            return None
        self._http11 = http11
        # RFC 9110 4.2.3: drop a default (or empty) port and a trailing dot, as keys.normalise_host does
        colon = <const char *>memchr(host, b':', hlen)
        if colon != NULL:
            i = colon - host
            if (hlen - i - 1 == 0) or (hlen - i - 1 == 2 and host[i + 1] == b'8' and host[i + 2] == b'0'):
                hlen = i
            elif memchr(colon + 1, b':', hlen - i - 1) != NULL:
                return None
        if hlen > 1 and host[hlen - 1] == b'.':
            hlen -= 1
        if hlen == 0:
            return None
        if self._routes and self._routed(host, hlen, target, tlen):
            return None   # a [[routes]] table may match: the general path applies it
        # 0: close after the response; 1: HTTP/1.1 keep-alive; 2: HTTP/1.0 keep-alive (said in the response)
        keep[0] = (1 if not conn_close else 0) if http11 else (2 if conn_keep and not conn_close else 0)
        return b"%s%d:%s%s" % (self._prefix, hlen, PyBytes_FromStringAndSize(host, hlen),
                                PyBytes_FromStringAndSize(target, tlen))

    cdef bint _routed(self, const char *host, Py_ssize_t hlen, const char *target, Py_ssize_t tlen):
        """Whether a row of the routes table fits (a superset of what edgecore.routes matches)."""
        cdef const char *colon = <const char *>memchr(host, b':', hlen)
        cdef Py_ssize_t nlen = (colon - host) if colon != NULL else hlen
        cdef Py_ssize_t rl, pl
        cdef bytes rh, rp
        for row in self._routes:
            rh = <bytes>row[0]
            rl = PyBytes_GET_SIZE(rh)
            if rl:
                if row[1]:
                    if nlen <= rl or memcmp(host + nlen - rl, PyBytes_AS_STRING(rh), rl) != 0:
                        continue
                elif nlen != rl or memcmp(host, PyBytes_AS_STRING(rh), rl) != 0:
                    continue
            rp = <bytes>row[2]
            pl = PyBytes_GET_SIZE(rp)
            if pl and (tlen < pl or memcmp(target, PyBytes_AS_STRING(rp), pl) != 0):
                continue
            return True
        return False

    def serve(self, bytes data, transport, int fd=-1):
        """Answer the fresh plain hits at the start of `data`, stopping early when the transport's write
        buffer is above write_high. `fd`: the transport's socket (-1: unknown), to which a pinned large hit
        is sent straight when nothing is buffered (see _write_value). -> (bytes consumed, close the
        connection?, the PlainRequest it stopped at when nothing is stored for its key, else None)."""
        cdef const char *p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0, hend
        cdef const char *crlf
        cdef int keep = 0, head_only = 0, answered
        cdef PlainRequest miss
        if not self.enabled:
            return 0, False, None
        while pos < n:
            crlf = self._find_head_end(p + pos, n - pos)
            if crlf == NULL:
                break
            hend = crlf - (p + pos)
            if hend > self._max_head:
                break
            key = self._parse(p + pos, hend, &keep, &head_only)
            if key is None:
                break
            if self.draining:
                keep = 0
            answered = self._answer(key, transport, keep, head_only, fd)
            if answered <= 0:
                if answered < 0:
                    miss = PlainRequest.__new__(PlainRequest)
                    miss.key = key
                    miss.start = pos
                    miss.end = pos + hend + 4
                    miss.keep = keep
                    miss.head_only = head_only
                    miss.http10 = not self._http11
                    return pos, False, miss
                break
            pos += hend + 4
            if not keep:
                return pos, True, None
            # flow control: with more pipelined requests behind it and the client not reading, stop here;
            # the protocol pauses reading and answers the rest once the buffer drains (one call per
            # pipelined hit only: a single request per read never pays for it)
            if self._write_high and pos < n and transport.get_write_buffer_size() > self._write_high:
                return pos, False, None
        return pos, False, None

    cdef const char *_find_head_end(self, const char *p, Py_ssize_t n):
        cdef const char *q = p
        cdef const char *e = p + n - 3
        while q < e:
            q = <const char *>memchr(q, b'\r', e - q)
            if q == NULL:
                return NULL
            if q[1] == b'\n' and q[2] == b'\r' and q[3] == b'\n':
                return q
            q += 1
        return NULL

    cdef int _answer(self, bytes key, transport, int keep, int head_only, int fd) except -2:
        """-> 1 answered, 0 found but not servable here (the Python path decides), -1 nothing stored."""
        cdef double t0 = _now(), fresh_until, birth, dur
        cdef const char *v
        cdef Py_ssize_t vlen, body_len = -1
        cdef int k
        cdef uint16_t status
        cdef unsigned short sl16
        found = self._lookup(key, t0, self._large)
        if found is None:
            return -1
        value, _, flags = found
        if flags != self._flag_plain:
            return 0
        if self._lease_idx >= 0 and <double>self._w[self._lease_idx] <= t0 * 1e6:
            return 0  # the invalidation lease is out: the Python path revalidates (policy.decide_lease)
        pinned = None
        if type(value) is not bytes:
            # a large value read in place (the slab cache's Pinned): its META and status line are copied, the
            # rest is written as views of the shared mapping, pinned until the transport drops them
            pinned = value
            value = pinned.head(self._meta)
            if PyBytes_GET_SIZE(value) < self._meta:
                return 0
            memcpy(&sl16, PyBytes_AS_STRING(value) + self._off_sl, 2)
            value = pinned.head(self._meta + sl16)
        v = PyBytes_AS_STRING(value)
        vlen = PyBytes_GET_SIZE(value) if pinned is None else len(pinned)
        if not self._valid(v, vlen):
            return 0
        memcpy(&fresh_until, v + self._off_fresh_until, 8)
        if t0 >= fresh_until:
            return 0
        # counted before the write: whoever has the response can already see it in the metrics
        dur = _now() - t0
        self._w[self._hit_idx] += 1
        self._w[self._served_idx] += 1
        self._w[self._sum_idx] += <int64_t>(dur * 1e9)
        k = 0
        while k < self._nbuckets and dur > self._bounds[k]:
            k += 1
        self._w[self._bucket_idx + k] += 1
        memcpy(&status, v + self._off_status, 2)
        k = status // 100 - 1
        self._w[self._status_idx + (k if 0 <= k < 5 else 4)] += 1
        if pinned is not None and head_only:
            body_len = pinned_body_len(v, self._off_head_len, self._meta, vlen)
            value = pinned.head(vlen - body_len)
            pinned = None
        return 1 if self._write_value(value, transport, keep, head_only, t0, PyBytes_AS_STRING(self._hit_status),
                                      PyBytes_GET_SIZE(self._hit_status),
                                      <long long>(fresh_until - t0), pinned, fd, body_len) else 0

    cdef inline bint _valid(self, const char *v, Py_ssize_t vlen):
        """The value is long enough for its META and its head/status-line lengths are consistent."""
        cdef unsigned short sl16
        cdef unsigned int hl32
        if vlen < self._meta:
            return False
        memcpy(&sl16, v + self._off_sl, 2)
        memcpy(&hl32, v + self._off_head_len, 4)
        return self._meta + <Py_ssize_t>hl32 <= vlen and sl16 <= hl32

    cdef bint _write_value(self, bytes value, transport, int keep, int head_only, double now,
                           const char *cs, Py_ssize_t cslen, long long ttl, object pinned=None,
                           int fd=-1, Py_ssize_t body_len=-1) except -1:
        """Write a stored response (entry.py's layout) with Age, Cache-Status (cs, then ttl unless it is
        negative), our Via when implied, Content-Length and Connection spliced in after the status line (stored
        or implied). False (nothing written) when the value is malformed. With `pinned` (a Pinned value, not
        HEAD), `value` is its META and status line only and the rest is sent from the shared mapping: straight
        into socket `fd` (Pinned.send: the kernel copies it during the call, no Python object per part) when
        the transport buffers nothing and is open, and what the socket did not take (or all of it, without fd)
        as the Pinned's views. body_len: the stored body's length when `value` is only the head of a pinned
        value (HEAD), else -1 (computed from the value)."""
        cdef const char *v = PyBytes_AS_STRING(value)
        cdef Py_ssize_t vlen = PyBytes_GET_SIZE(value) if pinned is None else len(pinned)
        cdef Py_ssize_t sl, head_len, rest, dlen, total, outsl
        cdef unsigned short sl16
        cdef unsigned int hl32
        cdef unsigned char ef
        cdef double birth
        cdef char dyn[320]
        cdef char *o
        cdef const char *conn
        cdef const char *status
        cdef Py_ssize_t connlen
        if not self._valid(v, vlen) or cslen > 100:
            return False
        memcpy(&sl16, v + self._off_sl, 2)
        memcpy(&hl32, v + self._off_head_len, 4)
        memcpy(&birth, v + self._off_birth, 8)
        ef = <unsigned char>v[self._off_eflags]
        sl = sl16
        head_len = hl32
        # the status line: stored after META, or implied (then nothing is stored: sl is 0)
        if ef & self._e_status:
            status = PyBytes_AS_STRING(self._status_line)
            outsl = PyBytes_GET_SIZE(self._status_line)
        else:
            status = v + self._meta
            outsl = sl
        if keep == 1:
            conn, connlen = b"", 0
        elif keep == 2:
            conn, connlen = b"connection: keep-alive\r\n", 24
        else:
            conn, connlen = b"connection: close\r\n", 19
        # age: N CRLF cache-status: cs[ttl] CRLF [via] content-length: N CRLF [connection]
        # (at most 5+20+16+100+20+2+64+16+20+2+24 bytes)
        o = dyn
        memcpy(o, b"age: ", 5)
        o = _put_ll(o + 5, <long long>(now - birth) if now > birth else 0)
        memcpy(o, b"\r\ncache-status: ", 16)
        memcpy(o + 16, cs, cslen)
        o += 16 + cslen
        if ttl >= 0:
            o = _put_ll(o, ttl)
        o[0] = b'\r'
        o[1] = b'\n'
        o += 2
        if ef & self._e_via:
            memcpy(o, PyBytes_AS_STRING(self._via_line), PyBytes_GET_SIZE(self._via_line))
            o += PyBytes_GET_SIZE(self._via_line)
        # Content-Length is never stored (entry.content_length): the body's length, HEAD included
        memcpy(o, b"content-length: ", 16)
        o = _put_ll(o + 16, <long long>(body_len if body_len >= 0 else vlen - self._meta - head_len))
        o[0] = b'\r'
        o[1] = b'\n'
        o += 2
        memcpy(o, conn, connlen)
        dlen = o + connlen - dyn
        rest = (head_len if head_only else vlen - self._meta) - sl
        if pinned is not None:
            # no copy in Python: the status line and the dynamic fields, then the shared mapping's bytes
            out = PyBytes_FromStringAndSize(NULL, outsl + dlen)  # one bytes object: status line + fields
            o = PyBytes_AS_STRING(out)
            memcpy(o, status, outsl)
            memcpy(o + outsl, dyn, dlen)
            _write_pinned(transport, fd, out, pinned, self._meta + sl)
        elif rest > self._large:
            # a large body is not copied again: the transport takes views of the lookup's private copy
            # (nothing else holds or reuses that bytes object)
            mv = memoryview(value)
            transport.writelines((PyBytes_FromStringAndSize(status, outsl), PyBytes_FromStringAndSize(dyn, dlen),
                                  mv[self._meta + sl:self._meta + sl + rest]))
        else:
            total = outsl + dlen + rest
            out = PyBytes_FromStringAndSize(NULL, total)
            o = PyBytes_AS_STRING(out)
            memcpy(o, status, outsl)
            memcpy(o + outsl, dyn, dlen)
            memcpy(o + outsl + dlen, v + self._meta + sl, rest)
            transport.write(out)
        return True

    def respond(self, bytes value, transport, int keep, bint head_only, bytes cache_status):
        """Write a stored response just fetched for a plain miss (the PlainRequest serve() returned).
        -> False when `value` is malformed (nothing written)."""
        return self._write_value(value, transport, keep, head_only, _now(), PyBytes_AS_STRING(cache_status),
                                 PyBytes_GET_SIZE(cache_status), -1)

    # ------------------------------------------------------------------ the plain miss
    # A plain request that missed (the PlainRequest serve() returned) may be fetched by the protocol without httptools:
    # upstream_head renders its upstream request from the bytes serve already checked, request_fields gives
    # the parsed fields when the protocol falls back to its general path, and parse_response reads the
    # upstream's response head when it is of the plainest kind (anything else is left to httptools).

    def upstream_head(self, bytes data, Py_ssize_t start, Py_ssize_t end, bytes peer, bytes via):
        """The GET sent upstream for the plain request data[start:end] (a head serve() parsed): fields
        lower-cased and trimmed as the general path renders them, Host as the key's (normalised, as
        keys.request_form gives it), those in `fetch_drop`, with "_" in their name (unless underscores) and
        Connection removed (RFC 9110 7.6.1), Via and X-Forwarded-For/-Proto added. None: leave it to the general path
        (a Via field, many X-Forwarded-For lines, or too long)."""
        cdef const char *p = PyBytes_AS_STRING(data)
        cdef const char *q
        cdef const char *e
        cdef const char *line
        cdef const char *colon
        cdef const char *v
        cdef const char *ve
        cdef const char *tgt
        cdef char *o = self._buf
        cdef char *olim = self._buf + self._bufsize - 256 - PyBytes_GET_SIZE(peer) - PyBytes_GET_SIZE(via)
        cdef const char *xff[8]
        cdef Py_ssize_t xffn[8]
        cdef int nxff = 0, i
        cdef bint conn_close
        cdef Py_ssize_t nlen, k
        cdef unsigned char c
        if start < 0 or end > PyBytes_GET_SIZE(data) or end - start < 16 or olim <= o:
            return None
        q = p + start
        e = p + end - 2  # at the final CRLF
        tgt = <const char *>memchr(q, b' ', e - q)
        q = <const char *>memchr(q, b'\r', e - q)
        if tgt == NULL or q == NULL:
            return None
        tgt += 1
        k = (q - 9) - tgt  # the target ends before " HTTP/1.x"
        if k <= 0 or o + 20 + k > olim:
            return None
        # a field named by Connection is hop-by-hop (RFC 9110 7.6.1); serve() took only "close" and
        # "keep-alive" as its values, and keep-alive is in fetch_drop
        conn_close = self._has_connection_close(q + 2, e)
        memcpy(o, b"GET ", 4)
        memcpy(o + 4, tgt, k)
        memcpy(o + 4 + k, b" HTTP/1.1\r\n", 11)
        o += 15 + k
        q += 2
        while True:
            line = _next_field(&q, e, &colon, &v, &ve)
            if line == NULL:
                if q < e:
                    return None
                break
            nlen = colon - line
            if _ieq(line, nlen, "connection", 10) or (conn_close and _ieq(line, nlen, "close", 5)):
                continue
            if _ieq(line, nlen, "via", 3):
                return None
            if _ieq(line, nlen, "x-forwarded-for", 15):
                if nxff == 8:
                    return None
                xff[nxff] = v
                xffn[nxff] = ve - v
                nxff += 1
                continue
            if self._dropped(line, nlen) or (not self._underscores and memchr(line, b'_', nlen) != NULL):
                continue
            if o + nlen + (ve - v) + 4 > olim:
                return None
            if _ieq(line, nlen, "host", 4):
                # the key's host (keys.normalise_host, as _parse built it): lower case, no default or
                # empty port, no trailing dot
                memcpy(o, b"host: ", 6)
                o += 6
                k = 0
                while k < ve - v:
                    c = <unsigned char>v[k]
                    o[k] = c + 32 if 65 <= c <= 90 else c
                    k += 1
                colon = <const char *>memchr(o, b':', k)
                if colon != NULL:
                    i = colon - o
                    if (k - i - 1 == 0) or (k - i - 1 == 2 and o[i + 1] == b'8' and o[i + 2] == b'0'):
                        k = i
                if k > 1 and o[k - 1] == b'.':
                    k -= 1
                o += k
                o[0] = b'\r'
                o[1] = b'\n'
                o += 2
                continue
            for k in range(nlen):
                c = <unsigned char>line[k]
                o[k] = c + 32 if 65 <= c <= 90 else c
            o += nlen
            o[0] = b':'
            o[1] = b' '
            memcpy(o + 2, v, ve - v)
            o += 2 + (ve - v)
            o[0] = b'\r'
            o[1] = b'\n'
            o += 2
        o += snprintf(o, 32 + PyBytes_GET_SIZE(via), b"via: %s\r\n", PyBytes_AS_STRING(via))
        memcpy(o, b"x-forwarded-for: ", 17)
        o += 17
        if nxff == 1 and xffn[0] == 0:
            nxff = 0  # an empty chain: the peer alone, as the general path renders it
        for i in range(nxff):
            if o + xffn[i] + 2 > olim:
                return None
            memcpy(o, xff[i], xffn[i])
            o += xffn[i]
            o[0] = b','
            o[1] = b' '
            o += 2
        memcpy(o, PyBytes_AS_STRING(peer), PyBytes_GET_SIZE(peer))
        o += PyBytes_GET_SIZE(peer)
        memcpy(o, b"\r\nx-forwarded-proto: http\r\n\r\n", 29)
        o += 29
        return PyBytes_FromStringAndSize(self._buf, o - self._buf)

    cdef bint _has_connection_close(self, const char *q, const char *e):
        """Whether the field lines in q[:e] (each ending in CRLF) hold a Connection: close."""
        cdef const char *line
        cdef const char *colon
        cdef const char *v
        cdef const char *ve
        while True:
            line = _next_field(&q, e, &colon, &v, &ve)
            if line == NULL:
                return False
            if _ieq(line, colon - line, "connection", 10) and _ieq(v, ve - v, "close", 5):
                return True

    cdef bint _dropped(self, const char *name, Py_ssize_t n):
        for d in self._fetch_drop:
            if _ieq(name, n, PyBytes_AS_STRING(d), PyBytes_GET_SIZE(d)):
                return True
        return False

    def request_fields(self, bytes data, Py_ssize_t start, Py_ssize_t end):
        """(method, target, header fields as (lower-case name, trimmed value)) of the plain request
        data[start:end], as the general path's parser callbacks would have collected them."""
        cdef const char *p = PyBytes_AS_STRING(data)
        cdef const char *q = p + start
        cdef const char *e = p + end - 2
        cdef const char *line
        cdef const char *colon
        cdef const char *v
        cdef const char *ve
        cdef const char *sp = <const char *>memchr(q, b' ', e - q)
        cdef const char *eol = <const char *>memchr(q, b'\r', e - q)
        if start < 0 or end > PyBytes_GET_SIZE(data) or sp == NULL or eol == NULL or eol - 9 <= sp:
            raise ValueError("not a request head serve() parsed")
        method = PyBytes_FromStringAndSize(q, sp - q)
        target = PyBytes_FromStringAndSize(sp + 1, (eol - 9) - (sp + 1))
        fields = []
        q = eol + 2
        while True:
            line = _next_field(&q, e, &colon, &v, &ve)
            if line == NULL:
                if q < e:
                    raise ValueError("not a request head serve() parsed")
                return method, target, fields
            if not self._underscores and memchr(line, b'_', colon - line) != NULL:
                continue   # dropped, as the general path's on_header does
            fields.append((_lower(line, colon - line), PyBytes_FromStringAndSize(v, ve - v)))

    def parse_response(self, bytes buf):
        """The upstream response head at the start of buf, when it is of the plainest kind: HTTP/1.1, a
        final status with a body (not 1xx, 204 or 304), one Content-Length, no Transfer-Encoding, Connection
        at most close or keep-alive, strict field syntax.
        -> None: the head is not complete yet; False: not plain (give the bytes to httptools);
        else (status, reason, fields as (lower-case name, trimmed value), head length, content length,
        keep-alive)."""
        cdef const char *p = PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef const char *hend = self._find_head_end(p, n)
        cdef const char *q
        cdef const char *e
        cdef const char *line
        cdef const char *colon
        cdef const char *v
        cdef const char *ve
        cdef const char *r
        cdef int status
        cdef long long clen = -1
        cdef bint keep = True
        cdef unsigned char c
        cdef Py_ssize_t i
        if hend == NULL:
            return False if n > self._max_head else None
        if hend - p > self._max_head:
            return False
        e = hend + 2  # the last field line's CRLF
        if n < 16 or memcmp(p, b"HTTP/1.1 ", 9) != 0:
            return False
        for i in range(9, 12):
            if not (48 <= p[i] <= 57):
                return False
        status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
        if status < 200 or status == 204 or status == 304:
            return False
        q = <const char *>memchr(p, b'\r', e - p)
        if q == NULL or q[1] != b'\n':
            return False
        if q == p + 12:
            reason = b""
        elif p[12] != b' ':
            return False
        else:
            if not _clean(p + 13, q, True):
                return False
            reason = PyBytes_FromStringAndSize(p + 13, q - (p + 13))
        fields = []
        q += 2
        while q < e:
            line = q
            while q < e and q[0] != b'\r':
                q += 1
            if q >= e or q[1] != b'\n':
                return False
            colon = _strict_name(line, q)
            if colon == NULL:
                return False
            v = _ows_value(colon, q, &ve)
            if not _clean(v, ve, True):
                return False
            q += 2
            if _ieq(line, colon - line, "content-length", 14):
                if clen >= 0 or ve == v or ve - v > 15:
                    return False
                clen = 0
                r = v
                while r < ve:
                    c = <unsigned char>r[0]
                    if not (48 <= c <= 57):
                        return False
                    clen = clen * 10 + (c - 48)
                    r += 1
            elif _ieq(line, colon - line, "transfer-encoding", 17):
                return False
            elif _ieq(line, colon - line, "connection", 10):
                if _ieq(v, ve - v, "close", 5):
                    keep = False
                elif not _ieq(v, ve - v, "keep-alive", 10):
                    return False
            fields.append((_lower(line, colon - line), PyBytes_FromStringAndSize(v, ve - v)))
        if clen < 0:
            return False
        return status, reason, fields, hend + 4 - p, clen, keep


cdef inline Py_ssize_t pinned_body_len(const char *v, Py_ssize_t off_head_len, Py_ssize_t meta,
                                      Py_ssize_t vlen) noexcept:
    """The body length of a stored value whose META starts at v (checked by _valid)."""
    cdef unsigned int hl32
    memcpy(&hl32, v + off_head_len, 4)
    return vlen - meta - <Py_ssize_t>hl32


cdef inline bint _dot_segment(const char *t, Py_ssize_t n) noexcept nogil:
    """Whether the path of the origin-form target t[:n] (up to "?") has a "." or ".." segment."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t e = n
    cdef const char *qm = <const char *>memchr(t, b'?', n)
    if qm != NULL:
        e = qm - t
    while i + 1 < e:
        if t[i] == b'/' and t[i + 1] == b'.':
            if i + 2 == e or t[i + 2] == b'/':
                return True
            if t[i + 2] == b'.' and (i + 3 == e or t[i + 3] == b'/'):
                return True
        i += 1
    return False


cdef bytes _lower(const char *p, Py_ssize_t n):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef char *o = PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>p[i]
        o[i] = c + 32 if 65 <= c <= 90 else c
    return out
