"""Separate test hosts: Linux network namespaces joined to this one by veth pairs.

    with Hosts(["near", "mid", "far"]) as hosts:
        hosts.ip_of("near")        # address of that host
        hosts.gateway_ip("near")   # this (root) namespace's address on its link
        hosts.prefix("near")       # ["ip", "netns", "exec", NAME]: run a command there
"""

from __future__ import annotations

import os
import shutil
import subprocess


def namespaces_permitted() -> str | None:
    """None if we can create namespaces here, else the reason we cannot."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    name = f"gpprobe{os.getpid()}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"network namespaces are not permitted here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], check=False)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Hosts:
    def __init__(self, names: list[str]):
        tag = os.getpid() % 100000
        self.names = names
        self.ns = {n: f"gp{tag}{n[:4]}" for n in names}
        self.index = {n: i + 1 for i, n in enumerate(names)}
        self._veths: list[str] = []

    def ip_of(self, name: str) -> str:
        return f"10.231.{self.index[name]}.2"

    def gateway_ip(self, name: str) -> str:
        return f"10.231.{self.index[name]}.1"

    def prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[name]]

    def __enter__(self) -> Hosts:
        try:
            for name in self.names:
                ns, i = self.ns[name], self.index[name]
                host_side, ns_side = f"gpv{os.getpid() % 10000}h{i}", f"gpv{os.getpid() % 10000}n{i}"
                _ip("netns", "add", ns)
                _ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
                self._veths.append(host_side)
                _ip("link", "set", ns_side, "netns", ns)
                _ip("addr", "add", f"{self.gateway_ip(name)}/30", "dev", host_side)
                _ip("link", "set", host_side, "up")
                _ip("-n", ns, "addr", "add", f"{self.ip_of(name)}/30", "dev", ns_side)
                _ip("-n", ns, "link", "set", ns_side, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for veth in self._veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
