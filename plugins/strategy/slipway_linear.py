"""Ansible's linear strategy, over Mitogen when it is installed.

Mitogen keeps one Python interpreter per host for the whole run and sends modules to it
over the SSH connection it already holds, instead of one SSH command and a fresh
interpreter per task: an idempotent site.yml runs in well under half the time (README,
"Converge speed"). It is a controller dependency (pyproject.toml), so it is there by
default; where it cannot be imported, this is Ansible's own linear strategy, with a
warning, and every playbook runs the same, only slower.

Both ways it loads Jinja's filter and test plugins once, here, in the controller's main
process: every task runs in a worker forked from that process, which otherwise finds the
plugins unloaded and loads them again, each task (about a third of an idempotent run's
controller time, measured with a profiler).

To run without it on purpose, ask for the built-in strategy: ANSIBLE_STRATEGY=linear.
"""

from __future__ import annotations

from ansible.plugins.loader import filter_loader, test_loader
from ansible.utils.display import Display

DOCUMENTATION = """
name: slipway_linear
short_description: Ansible's linear strategy, run over Mitogen when Mitogen is installed
description:
  - Task by task on every host, as C(ansible.builtin.linear); connections and modules go through
    Mitogen when the C(mitogen) package can be imported, and through Ansible's own SSH connection
    otherwise (with a warning).
"""

display = Display()

for _loader in (filter_loader, test_loader):
    for _plugin in _loader.all():  # loading is a side effect of listing them
        pass

try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except ImportError as error:
    from ansible.plugins.strategy.linear import StrategyModule as _Linear

    display.warning(
        f"Mitogen cannot be imported ({error}): running Ansible's plain linear strategy, "
        "slower; install the controller's dependencies (make venv) to get it back."
    )

    class StrategyModule(_Linear):
        """The built-in linear strategy, unchanged."""

else:
    _Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

    class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Base):  # type: ignore[no-redef,misc,valid-type]
        """The built-in linear strategy with Mitogen's connections and module runner."""
