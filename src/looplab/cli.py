"""The `looplab` command: one entry point for the loop's services and operations."""

from __future__ import annotations

import json
import platform
from importlib.metadata import version

import click

from looplab.core import DATA_LAYERS, load_config, project_paths


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("looplab"), prog_name="looplab")
def cli() -> None:
    """looplab: the whole machine-learning loop, notebook-first.

    \b
    Run the loop:        kedro run -c kedro.yml   (or: make run)
    Explore:             make lab                  (JupyterLab, kernel "looplab")
    See the pipelines:   make viz                  (kedro-viz)
    """


@cli.command()
@click.option("--env", default=None, help="Config environment merged over base (default: $KEDRO_ENV or local).")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def info(env: str | None, as_json: bool) -> None:
    """Where the project lives, which config it reads, and what data it has."""
    paths = project_paths()
    try:
        parameters = load_config("parameters", env=env)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    facts = {
        "looplab": version("looplab"),
        "python": platform.python_version(),
        "project_root": str(paths.root),
        "config_environments": sorted(p.name for p in paths.conf.iterdir() if p.is_dir()),
        "parameter_groups": sorted(parameters),
        "data_layers": {
            layer: sorted(f.name for f in paths.layer(layer).iterdir() if not f.name.startswith("."))
            for layer in DATA_LAYERS
            if paths.layer(layer).is_dir()
        },
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    width = max(map(len, facts))
    for key, value in facts.items():
        if isinstance(value, dict):
            click.echo(f"{key:<{width}}")
            for layer, files in value.items():
                click.echo(f"  {layer:<{width - 2}}  {', '.join(files) or '-'}")
        else:
            click.echo(f"{key:<{width}}  {', '.join(value) if isinstance(value, list) else value}")


if __name__ == "__main__":
    cli()
