"""Helpers the bench/*.py scripts share: a free loopback port, waiting for
a server to listen, and reading a process's resident memory."""

import socket
import time


def free_port():
    """A loopback TCP port nothing listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, attempts=200):
    """Returns once 127.0.0.1:`port` accepts connections (at most ~10 s)."""
    for _ in range(attempts):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settled_rss_kib(pid, seconds=2.0):
    """RSS once it stops moving (the server may still be accepting)."""
    last = rss_kib(pid)
    deadline = time.time() + 30
    while time.time() < deadline:
        time.sleep(seconds)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last
