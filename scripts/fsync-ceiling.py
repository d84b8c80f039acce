#!/usr/bin/env python3
"""What group commit can gain on a disk: the cost of one durable commit by its size.

    scripts/fsync-ceiling.py [DIR] [SECONDS]      (default: the current directory, 3 s per size)

Appends W KiB to a file whose blocks are already written (zeros, as Apsis keeps ahead of the
open base under sync = 0) and calls fdatasync after each append, for W = 1, 16 and 64. One
durable writer commits 1 KiB per fdatasync; W writers sharing each fdatasync commit W KiB. So
W * t(1 KiB) / t(W KiB) is the most group commit can make W writers over one writer on this
disk: what is left below it is the cost of waking the writers, not the disk.
"""
import os
import sys
import time


def commit_us(directory, kib, secs):
    path = os.path.join(directory, ".apsis-fsync-ceiling.tmp")
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"\0" * (256 << 20))
        os.fsync(fd)
        buf = b"x" * (kib << 10)
        pos = count = 0
        start = time.perf_counter()
        end = start + secs
        while time.perf_counter() < end and pos + len(buf) <= 256 << 20:
            os.pwrite(fd, buf, pos)
            os.fdatasync(fd)
            pos += len(buf)
            count += 1
        return (time.perf_counter() - start) / count * 1e6
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    t = {kib: commit_us(directory, kib, secs) for kib in (1, 16, 64)}
    print(" ".join(f"{kib} KiB: {us:.0f} us per commit;" for kib, us in t.items()))
    for w in (16, 64):
        print(f"ceiling for {w} writers over 1: {w * t[1] / t[w]:.1f}x")


if __name__ == "__main__":
    main()
