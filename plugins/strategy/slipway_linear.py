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
controller time, measured with a profiler). It also compiles each Jinja template and
expression once per source and compile settings, where Ansible compiles one on every use
(see `_compile` below), and keeps the compiled code on disk for the next run and for the
other workers of this one (`_CodeCache`: ~/.ansible/slipway/jinja; SLIPWAY_JINJA_CACHE=off
turns it off, or names another directory).

Both ways, too, no worker is forked where none is needed (Ansible forks one per task and
host): a task whose `when` is false on the host is skipped here, in the main process (49 of
an idempotent all-in-one site.yml's 271 task results), and a controller-only action (assert,
debug, fail, set_fact, validate_argument_spec: 64 more) runs here, through Ansible's own
TaskExecutor on a copy of the task, as the worker would. The result is the one Ansible's
worker would send, on the same queue, so callbacks, `register`, handlers and the recap see no
difference. Anything else goes to a worker as before: a true or failing condition, modules,
loops (a condition per item), delegation, includes, retries, timeouts.

Over Mitogen, each module_utils file a module imports is read and compiled once per run to
find what to send with it, not once for every module that imports it (`_scan_cached`).

To run without it on purpose, ask for the built-in strategy: ANSIBLE_STRATEGY=linear.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import hashlib
import importlib.machinery
import importlib.util
import inspect
import marshal
import os
import re
import shutil
import sys
import types
from typing import Any

import jinja2
import jinja2.environment
from ansible import constants as C
from ansible._internal import _display_utils, _task
from ansible._internal._templating import _jinja_bits
from ansible._internal._templating._engine import TemplateEngine
from ansible.executor.task_executor import TaskExecutor
from ansible.executor.task_result import _RawTaskResult
from ansible.plugins import loader as plugin_loader
from ansible.plugins.loader import filter_loader, test_loader
from ansible.release import __version__ as ansible_version
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


# Each template and expression compiled once per source, not once per use. Ansible compiles
# a template string every time it renders one (Jinja caches only templates it loads from
# files): a role default used by 20 tasks is compiled 20 times, in 20 workers. Jinja's
# compiled code does not depend on the environment object it was compiled in, only on its
# syntax settings, which are part of the key; each use still binds the code to its own
# environment, as Jinja's `from_string` does. Workers inherit what this process compiled
# before they forked. Measured on an idempotent site.yml: 2,056 compilations (~2 s of CPU)
# became 817 (~0.9 s). The cache holds one entry per distinct source and setting: it grows
# with the distinct templates a run renders, not with its hosts.
#
# The compiled code is also kept on disk (_CodeCache), as Python keeps .pyc files: the
# next run, and a worker that compiles what another worker already did, loads it instead.
# Measured on an idempotent site.yml: 800 compilations, 0.81 s of CPU, on each run.
_compiled: dict[tuple[Any, ...], Any] = {}
_expression_key: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(
    "slipway_expression_key", default=None
)
_Environment = _jinja_bits.AnsibleEnvironment
_jinja_compile = _Environment.compile
_jinja_compile_expression = _Environment.compile_expression


class _CodeCache:
    """Compiled Jinja code on disk, one file per key (its SHA-256), under
    $SLIPWAY_JINJA_CACHE (default: ~/.ansible/slipway/jinja), in a directory named after the
    Python, Jinja and Ansible versions and this format, that only this user may write.
    SLIPWAY_JINJA_CACHE=off turns it off. Any file that cannot be read or loaded is compiled
    again and rewritten; nothing here can fail a run."""

    FORMAT = 1
    MAX_ENTRIES = 20_000  # past this (years of edited templates), start over

    def __init__(self) -> None:
        self.root = self._open()

    @classmethod
    def _open(cls) -> str | None:
        setting = os.environ.get("SLIPWAY_JINJA_CACHE", "")
        if setting.lower() in ("off", "false", "no", "0"):
            return None
        base = os.path.expanduser(setting or os.path.join(C.ANSIBLE_HOME, "slipway", "jinja"))
        tag = (
            f"{sys.implementation.cache_tag}-jinja{jinja2.__version__}"
            f"-ansible{ansible_version}-{cls.FORMAT}"
        )
        root = os.path.join(base, tag)
        try:
            os.makedirs(base, mode=0o700, exist_ok=True)
            os.makedirs(root, mode=0o700, exist_ok=True)
            for path in (base, root):  # whoever can write either can plant code here
                status = os.stat(path)
                if status.st_uid != os.geteuid() or status.st_mode & 0o022:
                    display.warning(
                        f"{path} is not private to this user: compiled templates are not cached"
                    )
                    return None
            entries = os.listdir(root)
            for other in set(os.listdir(base)) - {tag}:  # other versions' code: never loaded
                if re.fullmatch(r"[a-z]+-\d+-jinja[\w.]+-ansible[\w.]+-\d+", other):
                    shutil.rmtree(os.path.join(base, other), ignore_errors=True)
            if len(entries) > cls.MAX_ENTRIES:
                for name in entries:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(root, name))
        except OSError as error:
            display.vvvv(f"compiled templates are not cached on disk: {error}")
            return None
        return root

    def _path(self, key: tuple[Any, ...]) -> str | None:
        digest = hashlib.sha256()
        try:
            self._feed(digest, key)
        except (TypeError, AttributeError):  # a part without a stable name: memory only
            return None
        return os.path.join(self.root or "", digest.hexdigest())

    @classmethod
    def _feed(cls, digest: Any, value: Any) -> None:
        """The key's parts by value and type, functions and classes by their names (the
        in-memory key holds the objects themselves)."""
        if isinstance(value, tuple):
            digest.update(b"(%d" % len(value))
            for part in value:
                cls._feed(digest, part)
            return
        if value is None or isinstance(value, (str, bool, int)):
            text = str.__str__(value) if isinstance(value, str) else repr(value)
            kind = "str" if isinstance(value, str) else type(value).__name__
        elif isinstance(value, type) or inspect.isfunction(value):
            text, kind = f"{value.__module__}.{value.__qualname__}", "name"
        else:
            raise TypeError(type(value))
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(b"%s:%d:" % (kind.encode(), len(encoded)) + encoded)

    def load(self, key: tuple[Any, ...]) -> Any:
        if self.root is None or (path := self._path(key)) is None:
            return None
        try:
            with open(path, "rb") as f:
                code = marshal.load(f)
        except (OSError, EOFError, ValueError, TypeError):
            return None
        return code if isinstance(code, types.CodeType) else None

    def store(self, key: tuple[Any, ...], code: Any) -> None:
        if self.root is None or not isinstance(code, types.CodeType):
            return
        if (path := self._path(key)) is None:
            return
        partial = f"{path}.{os.getpid()}.partial"
        try:
            with open(partial, "wb") as f:
                marshal.dump(code, f)
            os.replace(partial, path)  # readers see the whole file or none
        except OSError as error:
            display.vvvv(f"compiled template not cached: {error}")
            with contextlib.suppress(OSError):
                os.unlink(partial)


_on_disk = _CodeCache()


def _cached(key: tuple[Any, ...]) -> Any:
    """The code compiled for key in this process, or by any run before, or None."""
    if (code := _compiled.get(key)) is None and (code := _on_disk.load(key)) is not None:
        _compiled[key] = code
    return code


def _compile_key(env: Any, *source: Any) -> tuple[Any, ...]:
    escaping = _jinja_bits._TemplateCompileContext.current(optional=True)
    return (
        *source,
        type(env),
        tuple(getattr(env, name) for name in _jinja_bits._TEMPLATE_OVERRIDE_FIELD_NAMES),
        env.optimized,
        env.is_async,
        env.finalize,
        tuple(env.extensions),
        bool(escaping and escaping.escape_backslashes),
    )


def _compile(self: Any, source: Any, name: Any = None, filename: Any = None,
             raw: bool = False, defer_init: bool = False) -> Any:  # fmt: skip
    if self._debuggable_template_source:  # Ansible's template debugging keeps per-compile state
        return _jinja_compile(self, source, name, filename, raw, defer_init)
    key = (
        _compile_key(self, "template", source, name, filename, raw, defer_init)
        if isinstance(source, str)
        else _expression_key.get()  # the tree of the expression being compiled, or None
    )
    if key is None:  # a tree from elsewhere: not cached
        return _jinja_compile(self, source, name, filename, raw, defer_init)
    if (code := _cached(key)) is None:
        token = _expression_key.set(None)  # the key is this tree's, not a nested one's
        try:
            code = _compiled[key] = _jinja_compile(self, source, name, filename, raw, defer_init)
        finally:
            _expression_key.reset(token)
        _on_disk.store(key, code)
    return code


def _compile_expression(self: Any, source: str, undefined_to_none: bool = True) -> Any:
    if self._debuggable_template_source:
        return _jinja_compile_expression(self, source, undefined_to_none)
    key = _compile_key(self, "expression", source)
    if (code := _cached(key)) is not None:  # Jinja's own last steps, without the parse
        template = self.template_class.from_code(self, code, self.make_globals(None), None)
        return jinja2.environment.TemplateExpression(template, undefined_to_none)
    token = _expression_key.set(key)  # Jinja parses it and compiles the tree: _compile keeps it
    try:
        return _jinja_compile_expression(self, source, undefined_to_none)
    finally:
        _expression_key.reset(token)


_Environment.compile = _compile
_Environment.compile_expression = _compile_expression


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
        if (result := self._skipped_result(host, task, task_vars, play_context)) is not None:
            fields = task.dump_attrs()
        elif self._runs_here(task):
            result, fields = self._run_here(host, task, task_vars, play_context)
        else:
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
    def _once_on_its_host(task: Any) -> bool:
        """No loop (a worker runs each item) and no delegation to another host."""
        return task.loop is None and not task.loop_with and not task.delegate_to

    @classmethod
    def _runs_here(cls, task: Any) -> bool:
        return (
            task.action in CONTROLLER_ACTIONS
            and cls._once_on_its_host(task)
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
            or not self._once_on_its_host(task)
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
        """The built-in linear strategy, without a worker where none is needed."""

else:
    import ansible_mitogen.module_finder as _finder

    _Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)
    _imports_of: dict[tuple[str, int], tuple[str, ...]] = {}
    _spec_of: dict[tuple[str, tuple[str, ...]], Any] = {}

    def _scan_cached(module_name: str, module_path: str, search_path: Any) -> Any:
        """Mitogen's `_scan_importlib_find_spec` (the module_utils a module imports, found
        before it is sent), with each file's imports and each name's lookup kept for the run.

        Mitogen caches the answer per module but reads, compiles and walks every module_utils
        file again for each new module: 17 modules scanned 1.5 s on an idempotent site.yml,
        each ~90 ms of recompiling `basic.py` and the rest, while the task waited for it.
        Files do not change during a run; the key still carries the modification time."""
        prefix = importlib.machinery.ModuleSpec(_finder.PREFIX.rstrip("."), loader=None)
        prefix.submodule_search_locations = list(search_path)
        module = importlib.machinery.ModuleSpec(module_name, None, origin=module_path)
        queue = collections.deque([module])
        specs: dict[str, Any] = {prefix.name: prefix}
        while queue:
            spec = queue.popleft()
            if spec.origin is None:
                continue
            for name in _imports(spec, prefix.name):
                if name in specs:
                    continue
                parent = specs[name.rpartition(".")[0]]
                if parent is None or not parent.submodule_search_locations:
                    specs[name] = None
                    continue
                key = (name, tuple(parent.submodule_search_locations))
                if key not in _spec_of:
                    _spec_of[key] = importlib.util._find_spec(name, key[1])  # type: ignore[attr-defined]
                child = _spec_of[key]
                specs[name] = child if child is not None and child.origin is not None else None
                if specs[name] is not None:
                    queue.append(child)
        del specs[prefix.name]
        return sorted(
            (spec.name, spec.origin, spec.submodule_search_locations is not None)
            for spec in specs.values()
            if spec is not None
        )

    def _imports(spec: Any, prefix: str) -> tuple[str, ...]:
        key = (spec.origin, os.stat(spec.origin).st_mtime_ns)
        if key not in _imports_of:
            try:
                with open(spec.origin, "rb") as source:
                    code = compile(source.read(), spec.name, "exec")
            except Exception as error:  # as Mitogen's own scan reports it
                raise ValueError((error, spec)) from error
            _imports_of[key] = tuple(_finder.walk_imports(code, prefix))
        return _imports_of[key]

    # Mitogen's connection processes fork from this one when the strategy starts: they
    # inherit the replacement.
    _finder._scan_importlib_find_spec = _scan_cached

    class StrategyModule(  # type: ignore[no-redef]
        WithoutWorker,
        ansible_mitogen.strategy.StrategyMixin,
        _Base,  # type: ignore[valid-type,misc]
    ):
        """The built-in linear strategy with Mitogen's connections and module runner,
        without a worker where none is needed."""
