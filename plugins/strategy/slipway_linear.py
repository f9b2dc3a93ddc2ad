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

Both ways, too, no worker is forked where none is needed (Ansible forks one per task and
host): a task whose `when` is false on the host is skipped here, in the main process (49 of
an idempotent all-in-one site.yml's 271 task results), and a controller-only action (assert,
debug, fail, set_fact, validate_argument_spec: 64 more) runs here, through Ansible's own
TaskExecutor on a copy of the task, as the worker would. The result is the one Ansible's
worker would send, on the same queue, so callbacks, `register`, handlers and the recap see no
difference. Anything else goes to a worker as before: a true or failing condition, modules,
loops (a condition per item), delegation, includes, retries, timeouts.

To run without it on purpose, ask for the built-in strategy: ANSIBLE_STRATEGY=linear.
"""

from __future__ import annotations

from typing import Any

from ansible import constants as C
from ansible._internal import _display_utils, _task
from ansible._internal._templating._engine import TemplateEngine
from ansible.executor.task_executor import TaskExecutor
from ansible.executor.task_result import _RawTaskResult
from ansible.plugins import loader as plugin_loader
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


# Actions that run on the controller and never reach the host (their action plugins say so:
# `_requires_connection = False`), and that return at once: the main process runs them itself.
CONTROLLER_ACTIONS = frozenset(
    prefix + name
    for name in ("assert", "debug", "fail", "set_fact", "validate_argument_spec")
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
)


class WithoutWorker:
    """`_queue_task` without a worker where none is needed: a task whose condition is false
    on the host, and a controller-only action (CONTROLLER_ACTIONS). Their results go straight
    onto the results queue."""

    def _queue_task(self, host: Any, task: Any, task_vars: Any, play_context: Any) -> None:
        result = self._skipped_result(host, task, task_vars, play_context)
        fields = task.dump_attrs() if result is not None else None
        if result is None and self._runs_here(task):
            result, fields = self._run_here(host, task, task_vars, play_context)
        if result is None:
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
            _RawTaskResult(host=host, task=task, return_data=result, task_fields=fields)
        )
        self._pending_results += 1  # type: ignore[attr-defined]

    @staticmethod
    def _runs_here(task: Any) -> bool:
        return (
            task.action in CONTROLLER_ACTIONS
            and task.loop is None
            and not task.loop_with
            and not task.delegate_to
            and not task.async_val
            and not task.until  # retries would sleep here, holding up every other host
            and not task.timeout  # an alarm signal in the main process
        )

    def _run_here(
        self, host: Any, task: Any, task_vars: Any, play_context: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """What WorkerProcess does, in this process: Ansible's TaskExecutor on a copy of the
        task (it validates and squashes the task it runs, and writes into the variables it
        is given, which a forked worker does on its own copies)."""
        executed = task.copy()
        with _task.TaskContext(executed):
            result = TaskExecutor(
                host,
                executed,
                dict(task_vars),
                play_context,
                self._loader,  # type: ignore[attr-defined]
                plugin_loader.get_plugin_loader_namespace(),
                self._final_q,  # type: ignore[attr-defined]
                self._variable_manager,  # type: ignore[attr-defined]
            ).run()
        display.vvvv(f"{task.get_name()}: {task.action} ran on {host.name} without a worker")
        return result, executed.dump_attrs()

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

    class StrategyModule(WithoutWorker, _Linear):
        """The built-in linear strategy, skipping false conditions without a worker."""

else:
    _Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

    class StrategyModule(  # type: ignore[no-redef]
        WithoutWorker,
        ansible_mitogen.strategy.StrategyMixin,
        _Base,  # type: ignore[valid-type,misc]
    ):
        """The built-in linear strategy with Mitogen's connections and module runner,
        skipping false conditions without a worker."""
