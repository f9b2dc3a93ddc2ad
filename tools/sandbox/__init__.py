"""Local Debian 12 VMs (systemd-nspawn machines) for `make sandbox` and Molecule.

    python3 -m tools.sandbox up [--cluster NAME] [--topology allinone|split
                                 | --vm NAME:GROUP,GROUP ...] [--inventory PATH|-] [--json]
    python3 -m tools.sandbox status [--cluster NAME | --all] [--json]
    python3 -m tools.sandbox restart [--cluster NAME] VM   # halt and boot again, disk kept
    python3 -m tools.sandbox down [--cluster NAME | --all] [--purge] [--json]
    python3 -m tools.sandbox ssh VM [COMMAND ...]
    python3 -m tools.sandbox host   # install missing host packages (`up` does it too)

Each VM boots systemd as PID 1 from its own overlay over one cached, read-only
Debian 12 base (mmdebstrap, rebuilt only when its recipe changes), gets a static
address on a private bridge, and is reached over SSH as root with a key kept in
the state directory ($SLIPWAY_SANDBOX_DIR, default /var/lib/slipway-sandbox).
VMs come in named clusters so that several sets run at once: the default one,
`sandbox`, backs inventories/sandbox/hosts.yml; Molecule scenarios use their own.
`up` is idempotent: running VMs are left alone, crashed ones are booted again,
and VMs of the cluster that are no longer asked for are removed. `down` removes
every trace (processes, mounts, cgroups, and with the last cluster the bridge,
the iptables rules and the apt cache proxy); only the base image and the package
cache stay, unless `--purge`. Run from the repository root, as root. Progress
goes to stderr, the result to stdout. Exit status 2 means an operator must act on the message.

A second, independent sandbox on the same machine (the VM tests use one) takes
its own SLIPWAY_SANDBOX_DIR, SLIPWAY_SANDBOX_BRIDGE (default slipbr0) and
SLIPWAY_SANDBOX_NETWORK (default 10.231.0.0/24).

Every program the sandbox and tools/pebble.py need on the host (systemd-container,
mmdebstrap, iptables, apt-cacher-ng, pebble, ...) comes from one list, host.HOST_PACKAGES:
`up` and `host` install what is missing with apt-get, as tools/pebble.py does.

Modules: cli (commands), state (settings, state file, lock), image (base), network
(bridge, iptables, apt proxy), vms (lifecycle), host (commands, processes, packages).

Measured on a 2-core Debian 12 host: base build 37-42 s; up of 1 VM (boot to
`running` + SSH) 1.3 s, of 3 VMs 2.7 s; down 0.6-0.9 s (bench/sandbox_bench.py).
"""
