#!/usr/bin/env python3
"""Milliseconds from starting a filter to its answer to the first option
negotiation, measured RUNS times; prints a JSON list.

  first-answer.py activate RUNS -- PROGRAM [ARGS...]
      as systemd socket activation starts it on the first mail: the listening
      unix socket exists, the MTA has connected and sent OPTNEG, then the
      program is started with the socket on fd 3 (LISTEN_FDS=1).
  first-answer.py spawn RUNS SOCKET_PATH -- PROGRAM [ARGS...]
      the program binds SOCKET_PATH itself; connect is retried every 0.2 ms.

Python rather than Bun: Bun cannot hand a listening socket to a child. Every
program started is stopped (SIGTERM, then SIGKILL) by its PID.
"""
import json
import os
import signal
import socket
import struct
import sys
import time

OPTNEG = b"O" + struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
FRAME = struct.pack(">I", len(OPTNEG)) + OPTNEG
TIMEOUT = 30.0


def start(program, listen_fd=None):
    pid = os.fork()
    if pid == 0:
        try:
            env = dict(os.environ)
            if listen_fd is not None:
                os.dup2(listen_fd, 3)
                os.set_inheritable(3, True)  # dup2(3, 3) would keep close-on-exec
                env.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
            null = os.open("/dev/null", os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.execve(program[0], program, env)
        finally:
            os._exit(127)
    return pid


def stop(pid):
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def answer(sock, t0):
    sock.settimeout(TIMEOUT)
    if len(sock.recv(5)) == 0:
        raise SystemExit("first-answer.py: the program closed the connection without answering")
    return (time.perf_counter() - t0) * 1000


def activated(program, path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.sendall(FRAME)
    t0 = time.perf_counter()
    pid = start(program, listener.fileno())
    listener.close()
    try:
        return answer(client, t0)
    finally:
        client.close()
        stop(pid)


def spawned(program, path):
    t0 = time.perf_counter()
    pid = start(program)
    try:
        while True:
            if time.perf_counter() - t0 > TIMEOUT or os.waitpid(pid, os.WNOHANG)[0] == pid:
                raise SystemExit(f"first-answer.py: no answer on {path}")
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                client.connect(path)
                client.sendall(FRAME)
                return answer(client, t0)
            except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
                time.sleep(0.0002)
            finally:
                client.close()
    finally:
        stop(pid)


def main(argv):
    if "--" not in argv or len(argv) < 3:
        raise SystemExit(__doc__)
    split = argv.index("--")
    mode, runs, rest, program = argv[0], int(argv[1]), argv[2:split], argv[split + 1:]
    times = []
    for i in range(runs):
        path = rest[0] if mode == "spawn" else f"/tmp/first-answer-{os.getpid()}-{i}.sock"
        if os.path.exists(path):
            os.unlink(path)
        times.append(round((activated if mode == "activate" else spawned)(program, path), 2))
        if os.path.exists(path):
            os.unlink(path)
    print(json.dumps(times))


if __name__ == "__main__":
    main(sys.argv[1:])
