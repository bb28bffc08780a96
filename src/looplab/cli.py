"""The `looplab` command: one entry point for the loop's services and operations."""

from __future__ import annotations

import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import click

from looplab.cli_groups import _ENV_OPTION, data, drift, logs, ops
from looplab.core import DATA_LAYERS, load_config, project_paths

# Each command imports the layer it runs inside the command: `looplab --help` and `looplab info` answer in
# 0.2 s instead of the second or more that importing serving, the registry and the replay takes.




@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("looplab"), prog_name="looplab")
def cli() -> None:
    """looplab: the whole machine-learning loop, notebook-first.

    \b
    Run the loop:        looplab loop --start 2011-03-15 --end 2011-04-30   (or: make run)
    Start over:          looplab reset             (or: make reset)
    Explore:             make lab                  (JupyterLab, kernel "looplab")
    See the pipelines:   make viz                  (kedro-viz)
    """


def _environments(conf: Path, root: Path, parameters: dict) -> list[str]:
    "The folders of conf/ that are config environments: not the Feast repository (`data.features.repo_path`) kept there."
    repo = ((parameters.get("data") or {}).get("features") or {}).get("repo_path")
    feast = (root / repo).resolve() if repo else None
    return sorted(folder.name for folder in conf.iterdir() if folder.is_dir() and folder.resolve() != feast)


@cli.command()
@_ENV_OPTION
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
        "config_environments": _environments(paths.conf, paths.root, parameters),
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


@cli.command()
@click.argument("name")
@click.option("--data", "data_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The dataset: a .csv or .parquet file.")
@click.option("--target", required=True, help="The column to predict.")
@click.option("--task", type=click.Choice(["regression", "classification"]), default=None,
              help="Default: from the target (text, booleans and few distinct integers: classification).")
@click.option("--timestamp", default=None,
              help="The time column (the window is split by it); without it each row is timed by its arrival and the split is random.")
@click.option("--entity", default=None, help="The entity column (default: every row belongs to one entity).")
@click.option("--timezone", default="UTC", show_default=True, help="The zone of the data's naive times.")
@click.option("--force", is_flag=True, help="Write conf/NAME again if it exists.")
def init(name: str, data_file: Path, target: str, task: str | None, timestamp: str | None, entity: str | None,
         timezone: str, force: bool) -> None:
    """Write conf/NAME/, a config environment for your own data, and put the file where ingestion takes it.

    \b
    The dataset's schema, features, model, window, metrics and baseline are inferred from the file and
    replace the demo's in that environment; every path a run writes is under data/NAME/. Then:
      kedro run --env NAME        looplab status --env NAME        looplab serve --env NAME
    """
    from looplab.scaffold import InitError, init_environment, next_steps

    try:
        summary = init_environment(name, data_file, target=target, task=task, timestamp=timestamp, entity=entity,
                                   timezone=timezone, root=project_paths().root, force=force)
    except (InitError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(next_steps(summary))


# --- model registry ---------------------------------------------------------------------------
def _registry(env: str | None) -> dict:
    "Point MLflow at the project's store (from conf) and check it can be reached; the settings used."
    from looplab.core import configure_mlflow
    from looplab.registry import RegistryError
    from looplab.tracking import TrackingError, check_tracking

    try:
        settings = configure_mlflow(env=env)
        check_tracking(settings["tracking_uri"])
    except (FileNotFoundError, ValueError, KeyError, RegistryError, TrackingError) as error:
        raise click.ClickException(f"cannot use the MLflow store: {error}") from error
    return settings


def _registry_call(action, *args, **kwargs):
    "Run a registry function; its errors become one-line messages."
    from looplab.registry import RegistryError

    try:
        return action(*args, **kwargs)
    except (RegistryError, ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error


def _progress(line: str) -> None:
    click.echo(f"… {line}", err=True)


@cli.command()
@click.argument("name")
@click.argument("version")
@_ENV_OPTION
@click.option("--verify/--no-verify", default=None,
              help="First rebuild VERSION at its recorded commit and lock (reproduce --isolated) and refuse when anything differs "
                   "(default: registry.promote_verify, on in conf/prod).")
def promote(name: str, version: str, env: str | None, verify: bool | None) -> None:
    """Make VERSION (a number, or an alias such as challenger) of model NAME the champion; the previous one is kept for rollback."""
    from looplab import registry

    _registry(env)
    if verify is None:
        try:
            verify = bool((load_config("parameters", env=env).get("registry") or {}).get("promote_verify", False))
        except (FileNotFoundError, ValueError) as error:
            raise click.ClickException(str(error)) from error
    if verify:
        from looplab import reproduction

        try:
            result = reproduction.reproduce(f"{name}@{version}", env=env, isolated=True, progress=_progress)
        except (registry.RegistryError, ValueError, FileNotFoundError) as error:
            raise click.ClickException(f"refusing to promote {name} {version}: {error}") from error
        if not result["matches"]:
            raise click.ClickException(f"refusing to promote {name} version {result['version']}: its rebuild at commit "
                                       f"{result['commit']['recorded'][:12]} differs: {reproduction.difference(result)}")
        click.echo(f"verified: {name} version {result['version']} rebuilt at commit {result['commit']['recorded'][:12]} "
                   "with identical metrics and predictions", err=True)
        version = result["version"]  # the version verified, even if an alias has moved meanwhile
    click.echo(registry.describe_change(_registry_call(registry.promote, name, version)))


@cli.command()
@click.argument("name")
@_ENV_OPTION
def rollback(name: str, env: str | None) -> None:
    """Point the champion of NAME back at the previous champion."""
    from looplab import registry

    _registry(env)
    click.echo(registry.describe_change(_registry_call(registry.rollback, name)) + " (rolled back)")


@cli.command()
@_ENV_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the registry's state as JSON.")
def status(env: str | None, as_json: bool) -> None:
    """Registered models, their aliases (champion, challenger) and versions with gate and metrics."""
    from looplab import registry

    settings = _registry(env)
    state = _registry_call(registry.status, settings)
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    try:
        metrics = list(load_config("parameters", env=env)["evaluation"]["metrics"])
    except (FileNotFoundError, ValueError, KeyError):
        metrics = None  # no evaluation config: show what the versions have
    click.echo(registry.format_status(state, metrics=metrics))


@cli.command()
@click.argument("spec")
@_ENV_OPTION
@click.option("--tolerance", default=1e-6, show_default=True, help="Relative tolerance per metric (--isolated: none, exact).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--isolated", is_flag=True,
              help="Rebuild with the recorded commit's code (a temporary git worktree) in a throwaway environment of the "
                   "recorded lock (uv); metrics must be identical and predictions bit-identical.")
@click.option("--keep", is_flag=True, help="With --isolated: keep the worktree and the environment afterwards.")
@click.option("--fresh-env", "fresh_env", is_flag=True,
              help="With --isolated: install the recorded requirements.lock with uv into the throwaway environment even when "
                   "the running environment has every pin (route lock instead of shared; uv's cache is data/.cache/uv, a "
                   "package not in it is downloaded).")
def reproduce(spec: str, env: str | None, tolerance: float, as_json: bool, isolated: bool, keep: bool, fresh_env: bool) -> None:
    """Rebuild SPEC (NAME@ALIAS, NAME@VERSION or NAME/VERSION) from its recorded data and compare its metrics.

    Exits with status 1 when a metric (with --isolated: or a prediction) differs, or when --isolated cannot
    vouch for the version (trained from a tree with uncommitted changes, or the recorded commit's schema or
    feature view definitions do not hash as the version recorded).
    """
    from looplab import reproduction

    if fresh_env and not isolated:
        raise click.UsageError("--fresh-env builds the environment of an isolated rebuild: use it with --isolated")
    _registry(env)
    result = _registry_call(reproduction.reproduce, spec, tolerance=tolerance, env=env, progress=_progress,
                            isolated=isolated, keep=keep, fresh_environment=fresh_env)
    click.echo(json.dumps(result, indent=2) if as_json else reproduction.format_reproduction(result))
    if not result["matches"]:
        raise click.exceptions.Exit(1)


# --- serving ------------------------------------------------------------------------------------
@cli.command()
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: serving.workers).")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=None,
              help="Port of the first worker; worker i listens on PORT + i (default: serving.port).")
@click.option("--host", default=None, help="Address to listen on (default: serving.host, 127.0.0.1).")
@_ENV_OPTION
def serve(workers: int | None, port: int | None, host: str | None, env: str | None) -> None:
    """Serve the model that the configured alias names: N uvicorn workers, one port each; a worker that dies is restarted. Ctrl-C stops them."""
    import os
    import signal
    import subprocess
    import time

    from looplab.core import ENV_VARIABLE, find_project_root
    from looplab.worker_http import read_timeouts, worker_command

    try:
        root = find_project_root()
        settings = load_config("serving", env=env, root=root)["serving"]
        read_timeouts(settings)  # a bad timeout stops here, before any worker starts
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise click.ClickException(f"cannot read the serving configuration: {error}") from error
    workers = workers or int(settings.get("workers", 1))
    port = port or int(settings.get("port", 8000))
    host = host or settings.get("host", "127.0.0.1")
    child_env = {**os.environ, "LOOPLAB_PROJECT_ROOT": str(root)}
    # OpenMP threads that wait sleep instead of spinning: spinning workers starve each other on a busy machine
    child_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if env:
        child_env[ENV_VARIABLE] = env
    click.echo(f"serving {settings['model_name']}@{settings.get('alias', 'champion')} with {workers} worker(s)")
    processes = []

    def stop(*_):
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts us in the background would otherwise leave Ctrl-C ignored
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    def start_worker(index: int) -> subprocess.Popen:
        command, variables = worker_command(settings, host, port + index)  # uvicorn with read timeouts and the keep-alive
        return subprocess.Popen(command, cwd=root, env={**child_env, **variables})

    restarts: list[float] = []  # when workers were restarted: a worker that keeps dying stops the whole server
    try:
        for index in range(workers):
            processes.append(start_worker(index))
            click.echo(f"  worker {index + 1}: http://{host}:{port + index}  (pid {processes[-1].pid}; /docs, /ready, /metrics)")
        click.echo("Ctrl-C stops the workers.")
        while True:
            time.sleep(0.5)
            ended = [index for index, process in enumerate(processes) if process.poll() is not None]
            if not ended:
                continue
            for index in ended:
                dead = processes[index]
                if dead.returncode == 0:
                    click.echo(f"worker pid {dead.pid} stopped; stopping the others…")
                    raise KeyboardInterrupt
                restarts[:] = [moment for moment in restarts if moment > time.monotonic() - 60] + [time.monotonic()]
                if len(restarts) > 3 * workers:
                    raise click.ClickException(f"worker pid {dead.pid} exited with status {dead.returncode}, and workers keep "
                                               "exiting (more restarts than 3 per worker within a minute); stopping the others")
                # the gateway sends the dead worker's requests to the others meanwhile
                processes[index] = start_worker(index)
                click.echo(f"worker pid {dead.pid} on port {port + index} exited with status {dead.returncode}; "
                           f"restarted it as pid {processes[index].pid}", err=True)
    except KeyboardInterrupt:
        click.echo("stopping the workers…")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process in processes:
            if process.poll() is None:
                process.terminate()  # uvicorn shuts down gracefully: the prediction log is flushed
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- gateway ------------------------------------------------------------------------------------
@cli.command()
@_ENV_OPTION
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for nginx.conf, pid, temp files and logs (default: gateway.run_dir).")
@click.option("--listen", default=None, help="host:port to listen on (default: gateway.listen).")
@click.option("--print-config", is_flag=True, help="Print the nginx configuration and exit.")
def gateway(env: str | None, run_dir: Path | None, listen: str | None, print_config: bool) -> None:
    """nginx in front of the serving workers (conf gateway.yml): balancing, retries, canary or shadow, API keys, limits.

    Runs in the foreground; Ctrl-C (or SIGTERM) stops nginx.
    """
    import signal

    from looplab.gateway import Gateway, GatewayError, api_keys_for, load_gateway_settings, render_nginx_config

    try:
        settings = load_gateway_settings(env=env)
        settings["listen"] = listen or settings.get("listen", "127.0.0.1:8080")
        settings["api_keys"], made = api_keys_for(settings, project_paths().root)
        if made:  # shown this once: it is kept only in the key file
            click.echo(f"gateway: made an API key, kept in {settings.get('api_key_file', 'conf/local/api_key')} (mode 0600). "
                       f"Clients send it as the header X-API-Key: {made}", err=True)
        folder = (run_dir or project_paths().root / settings.get("run_dir", "data/06_models/gateway")).resolve()
        if print_config:
            click.echo(render_nginx_config(settings, folder), nl=False)
            return
    except (GatewayError, FileNotFoundError, ValueError, KeyError) as error:
        raise click.ClickException(str(error)) from error

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # before nginx starts, so a stop request never leaves it behind
    gateway = Gateway(settings, folder)
    try:
        click.echo(f"… checking and starting nginx (run folder {folder})", err=True)
        try:
            gateway.start()
        except GatewayError as error:
            raise click.ClickException(str(error)) from error
        variant = ("canary " + str(settings["canary"].get("challenger_weight")) + "% challenger"
                   if (settings.get("canary") or {}).get("enabled")
                   else "shadow to challenger" if (settings.get("shadow") or {}).get("enabled") else "champion only")
        click.echo(f"gateway on {gateway.url} → {', '.join(settings['workers'])} ({variant}); "
                   f"access log {gateway.access_log}; Ctrl-C stops")
        status = gateway.wait()
    except KeyboardInterrupt:
        click.echo("stopping the gateway", err=True)
        status = 0
    finally:
        gateway.stop()
    if status != 0:
        raise click.ClickException(f"nginx exited with status {status}; see {gateway.error_log}")


def _days(value: str) -> int:
    "'1d' or '1' → 1."
    text = str(value).strip().lower().removesuffix("d")
    if not text.isdigit() or int(text) < 1:
        raise click.BadParameter(f"{value!r}: give whole days, e.g. 1d or 7d")
    return int(text)


def _replay(start, end, step_days: int | None, mode: str | None, url: str | None, progress: bool, env: str | None,
            data: Path | None = None, via: str | None = None, stream_source: str | None = None) -> dict:
    "Run the replay and print its summary (shared by `looplab replay` and `looplab loop`)."
    from looplab.replay import REPLAY_METRIC
    from looplab.replay import replay as run_replay

    try:
        summary = run_replay(start, end, step_days, env=env, mode=mode, url=url, progress=progress, data=data, via=via,
                             stream_source=stream_source)
    except (RuntimeError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"replay {summary['start']} – {summary['end']}: {summary['days']} days in {summary['seconds']} s "
               f"({summary['days_per_second']} days/s), {summary['requests']} predictions")
    key, name = REPLAY_METRIC[summary["task"]]
    digits = 2 if key == "mae" else 3
    click.echo(f"  {name}: policy {summary[f'policy_{key}']:.{digits}f} vs static {summary[f'static_{key}']:.{digits}f}; "
               f"{summary['retrainings']} retraining(s), {summary['promotions']} promoted; "
               f"champion {summary['champion_start']} → {summary['champion_end']}; drift in {summary['drift_windows']} window(s)")
    if "stream" in summary:
        stream = summary["stream"]
        click.echo(f"  through stream source '{stream['source']}': {stream['messages']} message(s), {stream['stored']} row(s) stored "
                   f"({stream['added']} new), {stream['quarantined']} quarantined")
    click.echo(f"  report: {summary['report']}")
    return summary


@cli.command()
@click.option("--start", default=None, help="First day, e.g. 2011-03-15 (default: replay.start).")
@click.option("--end", default=None, help="Last day, inclusive (default: replay.end).")
@click.option("--step", default=None, help="Days per step, e.g. 1d (default: replay.step_days).")
@click.option("--mode", type=click.Choice(["in_process", "http"]), default=None,
              help="Serve in this process, or through a running gateway (default: replay.mode).")
@click.option("--url", default=None, help="The gateway for --mode http (default: replay.url).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--data", "data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A .csv or .parquet file of the days to replay, for an environment of your own data (default: replay.data).")
@click.option("--via", type=click.Choice(["landing", "stream"]), default=None,
              help="How each day arrives: as a landing file, or published to a stream source and stored by its consumer "
                   "(a running Redis: make stream) (default: replay.via).")
@click.option("--stream-source", default=None, help="The stream source of data.sources for --via stream (default: the only one).")
@_ENV_OPTION
def replay(start: str | None, end: str | None, step: str | None, mode: str | None, url: str | None,
           no_progress: bool, data: Path | None, via: str | None, stream_source: str | None, env: str | None) -> None:
    """Backtest the closed loop day by day: land, ingest, serve, monitor, retrain; then report policy vs static."""
    settings = load_config("parameters", env=env).get("replay") or {}
    defaults = {} if data else settings  # a file of days: from its first day to its last unless told
    if not data and not ((start or settings.get("start")) and (end or settings.get("end"))):
        raise click.UsageError("give --start and --end (or replay.start and replay.end in conf)")
    _replay(start or defaults.get("start"), end or defaults.get("end"), _days(step) if step else None, mode, url,
            not no_progress, env, data.resolve() if data else None, via, stream_source)


@cli.command()
@click.option("--policies", default="static,scheduled:7d,scheduled:30d,drift,performance,estimated", show_default=True,
              help="Comma-separated: static, scheduled:Nd, drift, performance, estimated; + combines triggers (drift+performance).")
@click.option("--start", default=None, help="First day, e.g. 2011-03-15 (default: replay.start).")
@click.option("--end", default=None, help="Last day, inclusive (default: replay.end).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Replays at once (default: one per core).")
@click.option("--data", "data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The file of days, for an environment of your own data (as looplab replay --data).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep each policy's workspace (a copy of the project, with its log) in this folder, outside the project.")
@click.option("--no-oracle", is_flag=True, help="Skip the hindsight oracle.")
@click.option("--runner", type=click.Choice(["direct", "papermill"]), default="direct", show_default=True,
              help="How retrainings run: direct (in the replay's process) or papermill (one executed notebook each, as retraining.runner).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_ENV_OPTION
def backtest(policies: str, start: str | None, end: str | None, workers: int | None, data: Path | None, keep: Path | None,
             no_oracle: bool, runner: str, no_progress: bool, env: str | None) -> None:
    """Replay a period once per retraining policy, in parallel, and say which policy pays (against a hindsight oracle).

    Writes backtest.json and backtest.html beside the monitoring store (data/08_reporting/backtest/)."""
    from looplab.backtest import BacktestError, format_table
    from looplab.backtest import backtest as run_backtest

    try:
        result = run_backtest(policies, start, end, env=env, workers=workers, data=data.resolve() if data else None,
                              progress=not no_progress, keep=keep, with_oracle=not no_oracle, runner=runner)
    except BacktestError as error:
        raise click.ClickException(str(error)) from None
    click.echo(format_table(result))
    click.echo(f"  report: {result['report']['html']}")
    if any(row.get("error") for row in result["policies"]):
        sys.exit(1)


# `loop`, not `run`: Kedro adds this command group to its own project commands, and `kedro run` must stay Kedro's.
@cli.command("loop")
@click.option("--start", required=True, help="First day of the replay after the loop's first run, e.g. 2011-03-15.")
@click.option("--end", required=True, help="Last day of the replay, inclusive, e.g. 2011-04-30.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_ENV_OPTION
def run_loop(start: str, end: str, no_progress: bool, env: str | None) -> None:
    """The whole loop once (kedro run -c kedro.yml), then the replay START..END: what `make run` does.

    Run again, it never repeats work: with a champion registered the Kedro run is skipped, and the
    replay continues from the day after the data's last day, or says the loop is up to date.
    `looplab reset` starts over.
    """
    import subprocess
    import sys

    from looplab.core import configure_mlflow, find_project_root, mlflow_settings
    from looplab.registry import ModelNotFoundError, alias_version
    from looplab.replay import data_clock, days_left

    try:
        asked = _day(start), _day(end)
    except ValueError as error:
        raise click.BadParameter(f"give days as YYYY-MM-DD ({error})") from None
    root = find_project_root()
    parameters = load_config("parameters", env=env, root=root)
    name = parameters["training"]["model_name"]
    configure_mlflow(env, root)
    try:
        champion = alias_version(name, "champion")
    except ModelNotFoundError:  # a fresh project: nothing registered yet
        champion = None
    if champion is None:
        command = [str(Path(sys.executable).parent / "kedro"), "run", "-c", "kedro.yml", *(["--env", env] if env else [])]
        click.echo(f"the loop, once: {' '.join(['kedro', *command[1:]])}")
        if subprocess.run(command, cwd=root).returncode != 0:
            raise click.ClickException("kedro run failed (its error is above); nothing was replayed")
    else:
        click.echo(f"the loop has run: {name} has a champion (version {champion}); kedro run skipped "
                   "(`looplab reset` starts over)")
    clock = data_clock(parameters["data"], root)
    left = days_left(*asked, clock)
    if left is None:
        click.echo(f"the replay is up to date: the data already reaches {clock:%Y-%m-%d} (asked up to {end}); "
                   "`make replay` goes on, `make reset` starts over")
    else:
        first, last = left
        if first > asked[0]:
            click.echo(f"continuing the replay from {first:%Y-%m-%d}: the data already reaches {clock:%Y-%m-%d}")
        _replay(f"{first:%Y-%m-%d}", f"{last:%Y-%m-%d}", None, None, None, not no_progress, env)
    configure_mlflow(env, root)
    click.echo("\nnext:")
    click.echo(f"  champion      {name} version {alias_version(name, 'champion')}   (looplab status)")
    click.echo(f"  report        {root / 'data' / '08_reporting' / 'replay'}")
    click.echo("  dashboard     .venv/bin/looplab apps monitoring → http://127.0.0.1:8866")
    click.echo("  API           make serve → http://127.0.0.1:8080   (send the key the gateway prints, kept in conf/local/api_key)")
    click.echo(f"  runs          make mlflow-ui → http://127.0.0.1:5000   (store: {mlflow_settings(env, root)['tracking_uri']})")
    click.echo("  pipelines     make viz · notebooks: make lab")


def _day(value: str):
    "`value` as a day (a pandas Timestamp at midnight)."
    import pandas as pd

    return pd.Timestamp(value).normalize()


@cli.command()
@click.option("--yes", is_flag=True, help="Remove without asking.")
@_ENV_OPTION
def reset(yes: bool, env: str | None) -> None:
    """Remove what runs of the loop left (derived data, the demo's sources, the MLflow store), to start over.

    Never touches the raw data you brought, conf/, code or notebooks; a tracking server is left alone.
    """
    import shutil

    from looplab.core import find_project_root
    from looplab.replay import generated_state, reset_project

    root = find_project_root()
    paths = generated_state(root, env)
    if not paths:
        click.echo("nothing to reset: no run has left anything in this project")
        return
    click.echo(f"{len(paths)} path(s) in {root} were left by runs of the loop:")
    for path in paths:
        size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.is_dir() else path.stat().st_size
        click.echo(f"  {path.relative_to(root).as_posix()}{'/' if path.is_dir() else ''}  ({size / 1e6:.1f} MB)")
    if not yes:
        click.confirm("remove them?", abort=True)
    removed = reset_project(root, env)
    free = shutil.disk_usage(root).free / 1e9
    click.echo(f"removed {len(removed)} path(s) ({free:.1f} GB free); `make run` starts over")


@cli.command()
@click.argument("app", default="serving")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8866, show_default=True, help="Port to listen on.")
@_ENV_OPTION
def apps(app: str, host: str, port: int, env: str | None) -> None:
    """Start Voila app APP from notebooks/apps/ (serving: ask the champion model; monitoring: the monitoring dashboard); Ctrl-C stops it."""
    import os
    import sys

    root = project_paths().root
    folder = root / "notebooks" / "apps"
    known = sorted(path.stem for path in folder.glob("*.ipynb"))
    if app not in known:
        raise click.ClickException(f"no app {app!r} in {folder}; apps: {', '.join(known) or 'none'}")
    voila = Path(sys.executable).parent / "voila"
    if not voila.is_file():
        raise click.ClickException(f"voila is not installed in {voila.parent}; run make setup")
    child_env = {**os.environ, "LOOPLAB_PROJECT_ROOT": str(root)}
    if env:
        child_env["KEDRO_ENV"] = env
    try:  # idle kernels culled, their number capped (serving.apps in conf)
        from looplab.serving_app import apps_settings, voila_command
        command = voila_command(voila, folder / f"{app}.ipynb", host, port, root, apps_settings(env, root))
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"looplab apps: {app} on http://{host}:{port}/ (config environment: {env or child_env.get('KEDRO_ENV') or 'local'}; Ctrl-C stops)", err=True)
    # Voila takes this process's place, so Ctrl-C and a terminating signal reach it directly
    os.execve(command[0], command, child_env)

cli.add_command(data)
cli.add_command(drift)
cli.add_command(ops)
cli.add_command(logs)

if __name__ == "__main__":
    cli()
