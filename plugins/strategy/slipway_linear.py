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

Both ways, too, a task whose `when` is false on a host is skipped here, in the main process,
without forking a worker for it: Ansible forks a worker per task and host only to find the
condition false there (60 of an idempotent all-in-one site.yml's 271 task results). The
result is the one Ansible's worker would send, on the same queue, so callbacks, `register`,
handlers and the recap see no difference. Anything else goes to a worker as before: a true or
failing condition, loops (a condition per item), delegation, includes.

To run without it on purpose, ask for the built-in strategy: ANSIBLE_STRATEGY=linear.
"""

from __future__ import annotations

from typing import Any

from ansible import constants as C
from ansible._internal import _display_utils
from ansible._internal._templating._engine import TemplateEngine
from ansible.executor.task_result import _RawTaskResult
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


class SkipWithoutWorker:
    """`_queue_task` for a task whose condition is false on the host: its skipped result
    straight onto the results queue, no worker forked."""

    def _queue_task(self, host: Any, task: Any, task_vars: Any, play_context: Any) -> None:
        skipped = self._skipped_result(host, task, task_vars, play_context)
        if skipped is None:
            super()._queue_task(host, task, task_vars, play_context)  # type: ignore[misc]
            return
        # What StrategyBase._queue_task and the worker would have done, less the fork.
        self._queued_task_cache[(host.name, task._uuid)] = {  # type: ignore[attr-defined]
            "host": host,
            "task": task,
            "task_vars": task_vars,
            "play_context": play_context,
        }
        self._tqm.send_callback("v2_runner_on_start", host, task)  # type: ignore[attr-defined]
        self._final_q.send_task_result(  # type: ignore[attr-defined]
            _RawTaskResult(host=host, task=task, return_data=skipped, task_fields=task.dump_attrs())
        )
        self._pending_results += 1  # type: ignore[attr-defined]

    def _skipped_result(
        self, host: Any, task: Any, task_vars: Any, play_context: Any
    ) -> dict[str, Any] | None:
        """The result Ansible's TaskExecutor returns for a false condition, or None where a
        worker must decide: no condition, a true one, one that fails to evaluate (the worker
        reports that error), loops, delegation, includes."""
        if (
            not task.when
            or task.loop is not None
            or task.loop_with
            or task.delegate_to
            or task.action in C._ACTION_ALL_INCLUDES
        ):
            return None
        try:
            # The worker's variables: the task's and play's connection settings on top.
            templar = TemplateEngine(loader=self._loader, variables=task_vars)  # type: ignore[attr-defined]
            context = play_context.set_task_and_variable_override(
                task=task, variables=task_vars, templar=templar
            )
            context.post_validate(templar=templar)
            if not context.remote_addr:
                context.remote_addr = host.address
            variables = dict(task_vars)
            context.update_vars(variables)
            because: dict[str, Any] = {}
            # Warnings of the condition go with the result, as the worker's do (a true
            # condition's are dropped here: the worker meets them again).
            with _display_utils.DeferredWarningContext(variables=variables) as warned:
                if task._resolve_conditional(task.when, variables, result_context=because):
                    return None
            result = {
                "changed": False,
                "skipped": True,
                "skip_reason": "Conditional result was False",
            } | because
            task.update_result_no_log(templar, result)
            if warnings := warned.get_warnings():
                result.update(warnings=warnings)
            if deprecations := warned.get_deprecation_warnings():
                result.update(deprecations=deprecations)
        except Exception as error:  # the worker evaluates it again and reports it
            display.vvvv(f"{task.get_name()}: condition left to the worker ({error})")
            return None
        display.vvvv(f"{task.get_name()}: condition false on {host.name}, skipped without a worker")
        return result


try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except ImportError as error:
    from ansible.plugins.strategy.linear import StrategyModule as _Linear

    display.warning(
        f"Mitogen cannot be imported ({error}): running Ansible's plain linear strategy, "
        "slower; install the controller's dependencies (make venv) to get it back."
    )

    class StrategyModule(SkipWithoutWorker, _Linear):
        """The built-in linear strategy, skipping false conditions without a worker."""

else:
    _Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

    class StrategyModule(  # type: ignore[no-redef]
        SkipWithoutWorker,
        ansible_mitogen.strategy.StrategyMixin,
        _Base,  # type: ignore[valid-type,misc]
    ):
        """The built-in linear strategy with Mitogen's connections and module runner,
        skipping false conditions without a worker."""
