"""Kedro project settings for looplab."""

import os
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


HOOKS = (RunContextHook(),)

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
