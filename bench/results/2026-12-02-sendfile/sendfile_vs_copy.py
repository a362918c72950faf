"""Sender CPU per 256 KiB response over loopback TCP: sendmsg from a shared mapping (the kernel copies)
against sendfile(2) from the same tmpfs file (page references, no copy), in one run, side by side.

The lead of the previous session was to serve large hits by sendfile from the cache file (a memfd or
/dev/shm file) with the freed ranges punched out before reuse. This measures whether sendfile is cheaper
for the sender on this machine before building it. Usage: python sendfile_vs_copy.py [rounds] [sends]
"""

import mmap
import os
import resource
import socket
import sys
import tempfile

SIZE = 256 * 1024
HEAD = b"x" * 200  # a response head, sent first by both modes


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(mode: str, sends: int) -> float:
    """Sender CPU µs per response (head + SIZE body) for `mode` ("copy" or "sendfile")."""
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as f:
        fd = f.fileno()
        os.ftruncate(fd, 1 << 20)
        m = mmap.mmap(fd, 1 << 20)
        m[4096 : 4096 + SIZE] = os.urandom(SIZE)
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        pid = os.fork()
        if pid == 0:  # the reader: drains until the sender closes
            c = socket.create_connection(ls.getsockname())
            buf = bytearray(1 << 20)
            while c.recv_into(buf):
                pass
            os._exit(0)
        s, _ = ls.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = memoryview(m)[4096 : 4096 + SIZE]
        t0 = _cpu()
        for _ in range(sends):
            if mode == "copy":
                s.sendmsg([HEAD, body])
            else:
                s.sendall(HEAD)
                off, end = 4096, 4096 + SIZE
                while off < end:
                    off += os.sendfile(s.fileno(), fd, off, end - off)
        cpu = _cpu() - t0
        s.close()
        ls.close()
        os.waitpid(pid, 0)
        body.release()
        m.close()
    return cpu / sends * 1e6


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    sends = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    print(f"kernel {os.uname().release}, {sends} sends of {SIZE} B per run, sender CPU µs per send")
    for i in range(rounds):
        copy = run("copy", sends)
        sf = run("sendfile", sends)
        print(f"round {i + 1}: copy {copy:.1f}  sendfile {sf:.1f}  sendfile/copy {sf / copy:.2f}")


if __name__ == "__main__":
    main()
