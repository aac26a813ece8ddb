"""Test-only start-up hook of every Python process the test session starts: tests/conftest.py puts this folder first
on PYTHONPATH and sets MIMIC_TEST_NETWORK_LOG for the whole session (jobs the tests run with ``python -m
beam_pipeline.run``, the worker processes Beam starts for them, the Dataflow submission and whatever those start all
inherit both), and installs the same guard in the pytest process itself. It does nothing unless
MIMIC_TEST_NETWORK_LOG is set, so a stray PYTHONPATH changes nothing.

1. Network guard: any connection (``connect``, ``connect_ex``) or DNS lookup (``getaddrinfo``, ``gethostbyname``)
   beyond loopback is refused (OSError) and appended to the file named by MIMIC_TEST_NETWORK_LOG, one line per
   attempt, so the session (and any test) can assert the file stays empty even when the caller swallows the error.
   It covers Python's socket module only: native code that opens its own sockets (gRPC's core, a browser) is not seen.
   ``python -S`` skips this hook.
2. Credentials: with STORAGE_EMULATOR_HOST set before Python starts, Beam's credential cache is marked "looked up,
   none found" right after ``apache_beam.internal.gcp.auth`` is imported, as the in-process gcs_server fixture does.
   Without it, every process without credentials retries ``google.auth.default()`` with backoff for about 25 s
   (and asks the GCE metadata server) before falling back to anonymous access.
"""

import importlib.abc
import ipaddress
import os
import socket
import sys

LOG_ENV = "MIMIC_TEST_NETWORK_LOG"


def _loopback(host) -> bool:
    if host in ("localhost", "", None):
        return True
    if isinstance(host, bytes):
        host = host.decode()
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(kind: str, host) -> OSError:
    log = os.environ.get(LOG_ENV)  # read at each attempt: a test may point its own attempts at its own file
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {kind} {host}\n")
    return OSError(f"{kind} {host}: network beyond loopback is blocked in this test")


def install_guard() -> None:
    """Refuse and log every connection and lookup beyond loopback in this process (once; a second call is a no-op)."""
    if getattr(socket, "_mimic_test_guard", False):
        return
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo, real_gethostbyname = socket.getaddrinfo, socket.gethostbyname

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise _refuse("connect", address[0])
        return real_connect(sock, address)

    def connect_ex(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise _refuse("connect", address[0])
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, str(_refuse("resolve", host)))
        return real_getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host):
        if not _loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, str(_refuse("resolve", host)))
        return real_gethostbyname(host)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.getaddrinfo, socket.gethostbyname = getaddrinfo, gethostbyname
    socket._mimic_test_guard = True


class _NoCredentialLookup(importlib.abc.MetaPathFinder):
    """After apache_beam.internal.gcp.auth is executed, mark its credential cache as initialised and empty."""

    TARGET = "apache_beam.internal.gcp.auth"

    def find_spec(self, name, path, target=None):
        if name != self.TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            module._Credentials._credentials_init = True
            module._Credentials._credentials = None

        spec.loader.exec_module = exec_module
        return spec


if __name__ == "sitecustomize" and os.environ.get(LOG_ENV):  # at start-up, not when conftest loads it by path
    install_guard()
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        sys.meta_path.insert(0, _NoCredentialLookup())
