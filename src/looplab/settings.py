"""Kedro project settings for looplab."""

import functools
import os
import sys
import warnings
from typing import Any

from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl

from looplab.core import CONFIG_PATTERNS, MERGE_STRATEGY, Settings, config_loader_class


class LooplabContext(KedroContext):
    """Kedro's context, with the run's `settings` in the catalog.

    `settings` is a `looplab.core.Settings`: the project root and the conf environment of this run
    (`kedro run --env`) with its resolved parameters, built once here. Nodes that reach the project's
    files or services take it as an input (`looplab.pipelines.with_settings`): nothing is handed on
    through `os.environ`, so two conf environments can run in one process.
    """

    def _get_parameters(self) -> dict[str, Any]:
        datasets = super()._get_parameters()
        datasets["settings"] = Settings(self.project_path, self.env or "local", datasets["parameters"])
        return datasets


def _looplab_error(error: BaseException | None) -> BaseException | None:
    "The first error in `error`'s chain that looplab raised on purpose (a class of its own), or None."
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__module__.startswith("looplab.") and type(error).__name__.endswith("Error"):
            return error
        error = error.__cause__ or error.__context__
    return None


def _short_errors(kind, error, trace, previous=None):
    "The interpreter's last word on an uncaught error: a known looplab error's message, anything else as before."
    known = _looplab_error(error)
    if known is None or os.environ.get("LOOPLAB_TRACEBACK") == "1":
        (previous or sys.__excepthook__)(kind, error, trace)
        return
    print(f"error: {known}", file=sys.stderr)
    print("(a looplab error: the run stopped here; LOOPLAB_TRACEBACK=1 shows the stack)", file=sys.stderr)


class ShortErrorsHook:
    """End a failed `kedro run` on a known looplab error with its message, not a stack trace.

    looplab's own error classes (a source that cannot be read, too little training data, an
    unreachable tracking store, ...) say what is wrong and where; a stack trace under the message
    only hides it. When a run fails, the interpreter's handler of uncaught errors (Kedro's rich
    tracebacks) is wrapped: a looplab error prints its message, anything else — a bug — keeps its
    full trace, and LOOPLAB_TRACEBACK=1 shows every trace. Callers that catch the error themselves
    (tests, `looplab replay`) see the exception as always.
    """

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        if _looplab_error(error) is not None and getattr(sys.excepthook, "func", None) is not _short_errors:
            sys.excepthook = functools.partial(_short_errors, previous=sys.excepthook)


class JsonLogsHook:
    """Every `kedro run` writes its log records as JSON lines too (`looplab.logs`), in its environment's log folder.

    The console stays as `conf/logging.yml` makes it; a process that set up its logs before (the replay,
    which runs Kedro in process) keeps its own file and component.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        from looplab.logs import setup_logs

        setup_logs(context.project_path, context.env, "kedro")


class TableLockHook:
    """A data run holds the validated table's lock (`looplab.stream.table_lock`) for its read-upsert-write.

    The lock is taken when the node that writes `validated_rides` starts (it reads the stored table and
    upserts the batch) and released once the table is saved, or when the node or the run fails. A stream
    consumer (`looplab data stream`) takes the same lock for each batch, so the two never store a table
    that misses the other's rows; the one that has to wait logs who holds the lock.
    """

    TABLE = "validated_rides"

    def __init__(self) -> None:
        self._held: Any = None

    @hook_impl
    def before_node_run(self, node, inputs) -> None:
        settings = inputs.get("settings")
        if self.TABLE in node.outputs and isinstance(settings, Settings) and self._held is None:
            from looplab.stream import table_lock

            lock = table_lock(settings.parameters["data"], settings.root, holder=f"kedro run --env {settings.env} (node {node.name})")
            lock.__enter__()
            self._held = lock

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(None, None, None)

    @hook_impl
    def after_dataset_saved(self, dataset_name) -> None:
        if dataset_name == self.TABLE:
            self._release()

    @hook_impl
    def on_node_error(self) -> None:
        self._release()

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._release()


HOOKS = (ShortErrorsHook(), JsonLogsHook(), TableLockHook())
CONTEXT_CLASS = LooplabContext

# OmegaConf deprecates the resolver registration Kedro itself performs; the notice is not for users.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated")
# Feast's pydantic notice about its own config classes (`vector_enabled`, `vector_len`): not for users either.
warnings.filterwarnings("ignore", message='Field name "vector_', category=UserWarning)

CONF_SOURCE = "conf"
CONFIG_LOADER_CLASS = config_loader_class()  # Kedro's OmegaConfigLoader; `_merge: replace` replaces a mapping whole
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": CONFIG_PATTERNS,
    "merge_strategy": MERGE_STRATEGY,
}
