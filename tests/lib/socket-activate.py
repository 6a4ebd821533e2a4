#!/usr/bin/env python3
"""Plays systemd socket activation for tests (systemd-socket-activate is not
on a fresh machine): binds the listening sockets, puts them on fds 3, 4, ...,
sets LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES, and execs the program. exec
keeps the pid, so LISTEN_PID is our own pid.

  socket-activate.py [--tcp NAME=HOST:PORT] [--tcp6 NAME=HOST:PORT] [--unix NAME=PATH] -- PROGRAM [ARGS...]

Sockets are passed in the order given.
"""
import fcntl
import os
import socket
import sys


def usage(msg):
    sys.stderr.write(f"socket-activate.py: {msg}\n{__doc__}")
    sys.exit(2)


def main(argv):
    if "--" not in argv:
        usage("missing -- before the program")
    split = argv.index("--")
    opts, program = argv[:split], argv[split + 1:]
    if not program:
        usage("no program")
    if len(opts) % 2:
        usage("every option needs a value")
    sockets = []
    for kind, spec in zip(opts[0::2], opts[1::2]):
        name, _, where = spec.partition("=")
        if not name or not where:
            usage(f"expected NAME=ADDRESS, got {spec!r}")
        if kind in ("--tcp", "--tcp6"):
            host, _, port = where.rpartition(":")
            family = socket.AF_INET6 if kind == "--tcp6" else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), int(port)))
        elif kind == "--unix":
            if os.path.exists(where):
                os.unlink(where)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(where)
        else:
            usage(f"unknown option {kind}")
        s.listen(128)
        sockets.append((name, s))

    # Move every socket out of the way first, so no dup2 below overwrites
    # another socket that happens to sit on a target fd.
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 100) for _, s in sockets]
    for _, s in sockets:
        s.close()
    for i, fd in enumerate(high):
        # dup2 leaves fd 3+i inheritable (no close-on-exec).
        os.dup2(fd, 3 + i)
        os.close(fd)

    env = dict(os.environ)
    env["LISTEN_FDS"] = str(len(sockets))
    env["LISTEN_PID"] = str(os.getpid())
    env["LISTEN_FDNAMES"] = ":".join(name for name, _ in sockets)
    os.execvpe(program[0], program, env)


if __name__ == "__main__":
    main(sys.argv[1:])
