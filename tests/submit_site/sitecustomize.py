"""Test-only start-up hook for the Dataflow submission subprocess (tests/test_dataflow_submit.py puts this folder
first on PYTHONPATH). It does nothing unless MIMIC_TEST_NETWORK_LOG is set, so a stray PYTHONPATH changes nothing.

1. Network guard: any connection or DNS lookup beyond loopback is refused (OSError) and appended to the file named by
   MIMIC_TEST_NETWORK_LOG, one line per attempt, so the test can assert the file stays empty. Child processes that
   Beam starts (``pip freeze`` for the submission environment, our wheel build) inherit PYTHONPATH and are guarded
   too.
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

_LOG = os.environ.get("MIMIC_TEST_NETWORK_LOG")


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
    with open(_LOG, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {kind} {host}\n")
    return OSError(f"{kind} {host}: network beyond loopback is blocked in this test")


def _install_guard() -> None:
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


if _LOG:
    _install_guard()
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        sys.meta_path.insert(0, _NoCredentialLookup())
