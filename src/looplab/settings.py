"""Kedro project settings for looplab."""

from kedro.config import OmegaConfigLoader

from looplab.core import CONFIG_PATTERNS, MERGE_STRATEGY

CONF_SOURCE = "conf"
CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": CONFIG_PATTERNS,
    "merge_strategy": MERGE_STRATEGY,
}
