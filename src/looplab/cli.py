"""The `looplab` command: one entry point for the loop's services and operations."""

from __future__ import annotations

import json
import platform
from importlib.metadata import version
from pathlib import Path

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


@cli.group()
def data() -> None:
    """Data versions: what each run stored, and what changed between two versions."""


def _data_paths(env: str | None) -> tuple[dict, Path]:
    "The versioned datasets' paths and the versions log, from conf."
    from looplab.versioning import dataset_paths

    try:
        root = project_paths().root
        parameters = load_config("parameters", env=env, root=root)["data"]
        return dataset_paths(parameters, root, env=env), root / parameters["versions_log"]
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise click.ClickException(f"cannot read the data configuration: {error}") from error


@data.command("versions")
@click.option("--dataset", "dataset", default=None, help="Only this dataset: ingested_batch (raw), validated_rides (validated) or features.")
@click.option("--env", default=None, help="Config environment merged over base (default: $KEDRO_ENV or local).")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
def data_versions(dataset: str | None, env: str | None, as_json: bool) -> None:
    """Stored versions of the raw, validated and feature data, with rows, columns and content hashes."""
    from looplab.versioning import DataVersionError, dataset_name, format_history, version_history

    paths, log = _data_paths(env)
    try:
        if dataset is not None:
            name = dataset_name(dataset)
            paths = {name: paths[name]}
        history = version_history(paths, log)
    except DataVersionError as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(history, indent=2) if as_json else format_history(history))


@data.command("diff")
@click.argument("before")
@click.argument("after")
@click.option("--dataset", "dataset", default="validated_rides", show_default=True,
              help="ingested_batch (raw), validated_rides (validated) or features.")
@click.option("--env", default=None, help="Config environment merged over base (default: $KEDRO_ENV or local).")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def data_diff(before: str, after: str, dataset: str, env: str | None, as_json: bool) -> None:
    """What changed from version BEFORE to version AFTER: rows, schema, column statistics.

    BEFORE and AFTER are Kedro version ids (or a unique prefix of one), `latest` or `previous`;
    `looplab data versions` lists them.
    """
    from looplab.versioning import DataVersionError, dataset_name, diff_versions, format_diff

    paths, _ = _data_paths(env)
    try:
        name = dataset_name(dataset)
        if paths[name] is None:
            raise DataVersionError(f"{name} is not stored as a file in this configuration, so it has no versions")
        difference = diff_versions(paths[name], before, after, name=name)
    except DataVersionError as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(difference, indent=2) if as_json else format_diff(difference))


if __name__ == "__main__":
    cli()
