"""Kedro project settings for looplab."""

import functools
import os
import sys
import warnings

from kedro.config import OmegaConfigLoader
from kedro.framework.hooks import hook_impl

from looplab.core import CONFIG_PATTERNS, ENV_VARIABLE, MERGE_STRATEGY, PROJECT_ROOT_VARIABLE


class RunContextHook:
    """Hand the run's project root and config environment to the library.

    Nodes that reach services (MLflow, Feast) read their settings with `looplab.core.load_config`;
    with these variables set, they read the same environment `kedro run --env` chose.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        os.environ[PROJECT_ROOT_VARIABLE] = str(context.project_path)
        os.environ[ENV_VARIABLE] = context.env or "local"


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


HOOKS = (RunContextHook(), ShortErrorsHook())

# OmegaConf deprecates the resolver registration Kedro itself performs; the notice is not for users.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated")

CONF_SOURCE = "conf"
CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": CONFIG_PATTERNS,
    "merge_strategy": MERGE_STRATEGY,
}
