"""plugins/filter/listeners.py: parsing ``ss -ltnpH`` and finding ports taken by others."""

from __future__ import annotations

from plugins.filter import listeners as listeners_mod

# Captured on a converged sandbox VM, plus a foreign web server and an unnamed socket.
SS = """\
LISTEN 0 511 0.0.0.0:443 0.0.0.0:* users:(("nginx",pid=6659,fd=7),("nginx",pid=5444,fd=7))
LISTEN 0      128      0.0.0.0:22   0.0.0.0:* users:(("sshd",pid=37,fd=3))
LISTEN 0      244    127.0.0.1:5432 0.0.0.0:* users:(("postgres",pid=3975,fd=6))
LISTEN 0      511         [::]:443     [::]:* users:(("nginx",pid=6659,fd=8))
LISTEN 0      5              *:80          *:* users:(("python3",pid=812,fd=3))
LISTEN 0      4096   127.0.0.1:6379  0.0.0.0:*
"""

WANTED = [
    {"port": 80, "program": "nginx", "for": "lb"},
    {"port": 443, "program": "nginx", "for": "lb"},
    {"port": "5432", "program": "postgres", "for": "db"},
    {"port": 6379, "program": "redis-server", "for": "redis"},
    {"port": 8000, "program": "gunicorn", "for": "web"},
]


def test_listeners_parse_addresses_ports_and_programs() -> None:
    socks = listeners_mod.listeners(SS)
    assert [(s["address"], s["port"]) for s in socks] == [
        ("0.0.0.0", 443),
        ("0.0.0.0", 22),
        ("127.0.0.1", 5432),
        ("[::]", 443),
        ("*", 80),
        ("127.0.0.1", 6379),
    ]
    assert socks[0]["programs"] == [("nginx", 6659), ("nginx", 5444)]
    assert socks[-1]["programs"] == []


def test_only_ports_held_by_another_program_conflict() -> None:
    assert listeners_mod.port_conflicts(SS, WANTED) == [
        "port 80 (wanted by nginx for lb) is held by python3 (pid 812) on *",
        "port 6379 (wanted by redis-server for redis) is held by an unnamed program on 127.0.0.1",
    ]


def test_a_converged_host_and_a_bare_one_have_no_conflict() -> None:
    mine = "\n".join(
        line for line in SS.splitlines() if "python3" not in line and "6379" not in line
    )
    assert listeners_mod.port_conflicts(mine, WANTED) == []
    assert listeners_mod.port_conflicts("", WANTED) == []
