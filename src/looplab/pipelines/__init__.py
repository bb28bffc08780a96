"""looplab's Kedro pipelines, one folder per layer of the loop.

Nodes that reach the project's files or services (MLflow, Feast, the landing folder) take the run's
`settings` (a `looplab.core.Settings`: project root, conf environment, parameters) as their last
input; `with_settings` hands its `root` and `env` to the library function as keywords. Kedro puts
`settings` in the catalog (`looplab.settings.LooplabContext`), so nothing travels through
`os.environ` or the working directory.

Each pipeline tags its nodes with its layer, and each dataset of the catalog names its layer
(`metadata: kedro-viz: layer`), so kedro-viz draws the loop in four bands (data, training,
deployment, monitoring) and filters by layer, and `kedro run --tags training` runs one. Node
names stay short (`kedro run --nodes validate_batch_node`): Kedro namespaces would group the same
way but prefix every node's name.
"""

import functools
from collections.abc import Callable


def with_settings(function: Callable, *names: str) -> Callable:
    "`function` as a node whose last input is the run's `settings`; its attributes `names` (root, env) go in as keywords."

    def node(*inputs):
        *arguments, settings = inputs
        return function(*arguments, **{name: getattr(settings, name) for name in names})

    functools.update_wrapper(node, function)
    del node.__wrapped__  # Kedro checks a node's inputs against the signature: this one's, one input more
    node.__annotations__ = {}  # the function's, in its module's names, do not describe this signature
    return node


def after_previous(function: Callable) -> Callable:
    "`function` with one more first input that it ignores: it only orders the node after that dataset."

    def node(_previous, *inputs, **keywords):
        return function(*inputs, **keywords)

    functools.update_wrapper(node, function)
    del node.__wrapped__
    node.__annotations__ = {}
    return node
