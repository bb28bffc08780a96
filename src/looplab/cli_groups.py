"""The `looplab data`, `looplab drift` and `looplab ops` command groups (data versions and refused data; the drift gate calibrated on a replay; the monitoring exporter and deploy files), `looplab logs`, and the JSON logs every command writes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from looplab.core import load_config, project_paths

# The component a command's records carry in the JSON logs (looplab.logs): by command name, else the command's group
# (`data`, `ops`), else the command's own name; and the console level of commands that show more than warnings.
_COMPONENTS = {"serve": "serving", "loop": "replay", "promote": "registry", "rollback": "registry", "status": "registry",
               "reproduce": "reproduction"}
_CONSOLE_LEVELS = {("ops", "serve"): "INFO"}


def _start_logs(ctx: click.Context, param: click.Parameter, env: str | None) -> str | None:
    "The `--env` option's callback: the command's JSON logs are set up (`looplab.logs.setup_logs`) before it runs."
    from looplab.logs import LogSettingsError, setup_logs

    group = ctx.parent.info_name if ctx.parent is not None and ctx.parent.parent is not None else None
    component = _COMPONENTS.get(ctx.info_name, group or ctx.info_name)
    try:
        setup_logs(None, env, component, console_level=_CONSOLE_LEVELS.get((group, ctx.info_name), "WARNING"))
    except LogSettingsError as error:
        raise click.ClickException(f"cannot set up the logs: {error}") from None
    except (FileNotFoundError, ValueError, OSError):
        pass  # an unknown environment or a project without conf/local: the command itself says so
    return env


_ENV_OPTION = click.option("--env", default=None, callback=_start_logs,
                           help="Config environment merged over base (default: $KEDRO_ENV or local).")


# --- drift: the effect-size gate, calibrated on what monitoring stored ---------------------------
@click.group()
def drift() -> None:
    """Drift detection: choose the effect size a drift alarm needs from a replay's windows."""


@drift.command("calibrate")
@click.option("--target", type=click.FloatRange(min=0), default=4.0, show_default=True,
              help="False alarms a year allowed (an alarm in a window whose error did not degrade).")
@click.option("--min-features", type=click.IntRange(min=1), default=None,
              help="Features that must drift for a window to alarm (default: retraining.policy.drift_min_features).")
@click.option("--plot", "plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also save the plot as a PNG.")
@_ENV_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def drift_calibrate(target: float, min_features: int | None, plot: Path | None, env: str | None, as_json: bool) -> None:
    """The smallest monitoring.drift.min_effect whose false alarms a year stay within --target, from the monitoring store.

    \b
    Replay a period first (looplab replay), or monitor for some weeks; the store keeps every
    window's per-feature tests with their effect sizes and, once labels came, the window's error.
    """
    from looplab.backtest import calibrate_effect, plot_calibration
    from looplab.drift import DriftError
    from looplab.monitoring import load_store, monitoring_settings

    try:
        root = project_paths().root
        parameters = load_config("parameters", env=env, root=root)
        settings = monitoring_settings(parameters, root)
        policy = (parameters.get("retraining") or {}).get("policy") or {}
        stored = load_store(store_path=settings["store_path"])
        result = calibrate_effect(stored["windows"], stored["drift"], target, float(policy.get("degradation", 0.25)),
                                  min_features or int(policy.get("drift_min_features", 1)))
    except (DriftError, FileNotFoundError, ValueError, KeyError) as error:
        raise click.ClickException(str(error)) from None
    if plot is not None:
        plot_calibration(result).savefig(plot, dpi=110)
    if as_json:
        click.echo(json.dumps({**{key: value for key, value in result.items() if key != "table"},
                               "table": result["table"].to_dict("records")}, indent=2))
        return
    table = result["table"]
    click.echo(f"{'min_effect':>10}  {'alarms/yr':>9}  {'false/yr':>8}  {'degraded caught':>15}")
    for row in table.itertuples():
        marker = "  <- chosen" if row.min_effect == result["min_effect"] else ""
        click.echo(f"{row.min_effect:>10.3f}  {row.alarms_per_year:>9.1f}  {row.false_alarms_per_year:>8.1f}  "
                   f"{row.degraded_caught:>7} of {result['degraded']:<5}{marker}")
    click.echo(result["summary"])
    current = settings.get("drift", {}).get("min_effect")
    click.echo(f"conf: monitoring.drift.min_effect: {result['min_effect']:g}   (now {current!r}; "
               f"in conf/{env or 'local'}/parameters_monitoring.yml or conf/base/)")


# --- data: versions, differences, refused data --------------------------------------------------
@click.group()
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
@_ENV_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
@click.option("--last", type=click.IntRange(min=0), default=20, show_default=True,
              help="Show the newest N versions of each dataset; 0: all of them.")
def data_versions(dataset: str | None, env: str | None, as_json: bool, last: int) -> None:
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
    older = {}
    for name, entry in history.items():
        if last and len(entry["versions"]) > last:
            older[name] = len(entry["versions"]) - last
            entry["versions"] = entry["versions"][-last:]
    click.echo(json.dumps(history, indent=2) if as_json else format_history(history))
    if older and not as_json:
        click.echo("older versions not shown (--last 0 shows all): " + ", ".join(f"{name} {count}" for name, count in older.items()))


@data.command("diff")
@click.argument("before")
@click.argument("after")
@click.option("--dataset", "dataset", default="validated_rides", show_default=True,
              help="ingested_batch (raw), validated_rides (validated) or features.")
@_ENV_OPTION
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


def _refused_setup(env: str | None) -> tuple[dict, Path, Path]:
    "The `data` parameters, the quarantine dataset's folder and the project root."
    from looplab.core import catalog_config

    root = project_paths().root
    try:
        return load_config("parameters", env=env, root=root)["data"], Path(catalog_config(env, root)["rides_quarantine"]["filepath"]), root
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise click.ClickException(f"cannot read the data configuration: {error}") from error


@data.command("quarantine")
@_ENV_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def data_quarantine(env: str | None, as_json: bool) -> None:
    """What the data layer refused: landing files it could not read, and quarantined rows by reason."""
    from looplab.ingestion import refused

    params, quarantine, root = _refused_setup(env)
    facts = refused(params, quarantine, root)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    click.echo(f"rejected files: {len(facts['rejected_files'])}")
    for record in facts["rejected_files"]:
        click.echo(f"  {record['file']}  ({record['source']}, {record.get('rejected_at', '?')}): {record['reason']}")
    click.echo(f"quarantined rows: {facts['quarantined_rows']}")
    for kind, count in facts["reasons"].items():
        click.echo(f"  {count:>7,}  {kind}")
    if facts["rejected_files"] or facts["quarantined_rows"]:
        click.echo("after a fix: looplab data retry --file NAME | --reason TEXT, then kedro run -p data")


@data.command("retry")
@_ENV_OPTION
@click.option("--file", "file", default=None, help="A rejected file (fixed in place in rejected/) to put back into its landing folder.")
@click.option("--reason", default=None, help="Send the quarantined rows whose reason contains this text back through the data layer.")
def data_retry(env: str | None, file: str | None, reason: str | None) -> None:
    """Send refused data through ingestion and validation again, after a fix (one of --file or --reason)."""
    from looplab.ingestion import retry_file, retry_rows

    if (file is None) == (reason is None):
        raise click.UsageError("give one of --file NAME or --reason TEXT (looplab data quarantine lists them)")
    params, quarantine, root = _refused_setup(env)
    try:
        if file is not None:
            click.echo(f"{file} is back in {retry_file(params, file, root).parent}")
        else:
            path, count = retry_rows(params, quarantine, reason, root)
            click.echo(f"{count:,} quarantined row(s) written to {path}")
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"next: kedro run -p data{f' --env {env}' if env else ''}  (valid rows are stored once; the others are quarantined again)")


@data.command("stream")
@click.option("--source", "source_name", default=None, help="The stream source of data.sources to read (default: the only one).")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535), default=None,
              help="Serve the consumer's Prometheus metrics (lag, pending, counts) at http://HOST:PORT/metrics (default: the source's metrics_port; HOST: its metrics_host, 127.0.0.1).")
@click.option("--max-batches", type=click.IntRange(min=1), default=None, help="Stop after this many batches.")
@click.option("--until-idle", is_flag=True, help="Stop when the stream has nothing more to read.")
@click.option("--pause-file", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True)  # the stream tests' pause point
@click.option("--pause-at", default="store", hidden=True)
@_ENV_OPTION
def data_stream(source_name: str | None, metrics_port: int | None, max_batches: int | None, until_idle: bool,
                pause_file: Path | None, pause_at: str, env: str | None) -> None:
    """Consume a stream source (kind: stream): store each batch (valid rows, quarantine), then acknowledge it; Ctrl-C stops."""
    import signal
    import threading

    from looplab.sources import SourceError
    from looplab.stream import StreamTotals, consume, pick_stream_source, serve_metrics, stream_registry

    root = project_paths().root
    try:
        params = load_config("parameters", env=env, root=root)["data"]
        source = pick_stream_source(params, source_name)
        source.ensure_group()
    except (FileNotFoundError, ValueError, KeyError, SourceError) as error:
        raise click.ClickException(str(error)) from None
    totals, metrics_port = StreamTotals(), metrics_port or source.metrics_port
    try:
        metrics = serve_metrics(stream_registry(source, totals), source.metrics_host, metrics_port) if metrics_port else None
    except OSError as error:
        raise click.ClickException(f"cannot serve the metrics on {source.metrics_host}:{metrics_port}: {error}") from None
    click.echo(f"source '{source.name}': stream {source.stream} as {source.group}/{source.consumer}, {source.batch_size} message(s) a batch"
               + (f"; metrics on http://{source.metrics_host}:{metrics_port}/metrics" if metrics else "") + "; Ctrl-C stops", err=True)

    stopping = threading.Event()

    def on_signal(number: int, frame) -> None:  # Ctrl-C or TERM: finish the batch in hand (stored, acknowledged), then stop
        if stopping.is_set():
            raise KeyboardInterrupt  # the second one stops at once: what was read and not acknowledged comes back
        stopping.set()
        click.echo(f"{signal.Signals(number).name}: stopping after the batch in hand (again: at once)", err=True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def progress(report: dict) -> None:
        lag = source.lag()
        click.echo(f"batch {totals.batches}: {report['messages']} message(s) {report['first_id']}..{report['last_id']}"
                   f"{' (redelivered)' if report['redelivered'] else ''}: {report['stored']} row(s) stored ({report['added']} new), "
                   f"{report['quarantined']} quarantined; lag {lag['lag']}, pending {lag['pending']}", err=True)

    try:
        consume(source, params, env=env, root=root, max_batches=max_batches, until_idle=until_idle, totals=totals, progress=progress,
                pause=pause_file, pause_at=tuple(pause_at.split(",")), stop=stopping.is_set)
    except SourceError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        click.echo("stopped at once; a batch read and not yet acknowledged is read again at the next start", err=True)
    finally:
        if metrics is not None:
            metrics.shutdown()
    click.echo(f"{totals.messages} message(s) in {totals.batches} batch(es): {totals.stored} row(s) stored ({totals.added} new), "
               f"{totals.quarantined} quarantined ({totals.poison} message(s) not rows)")



# --- ops: monitoring exporter, Alertmanager webhook, deploy files rendered from conf ----------------
def _ops_settings(env: str | None) -> dict:
    from looplab.ops_config import OpsError, ops_settings

    try:
        return ops_settings(env=env)
    except (OpsError, FileNotFoundError, ValueError, KeyError) as error:
        raise click.ClickException(f"cannot read the ops configuration: {error}") from error


@click.group()
def ops() -> None:
    """Operations: the monitoring exporter + Alertmanager webhook, and the deploy files rendered from conf."""


@ops.command("serve")
@click.option("--host", default=None, help="Address to listen on (default: monitoring.ops.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=None, help="Port (default: monitoring.ops.port).")
@_ENV_OPTION
def ops_serve(host: str | None, port: int | None, env: str | None) -> None:
    """Serve /metrics (monitoring store, champion, gateway access log) and POST /v1/alerts (Alertmanager → retraining trigger)."""
    from looplab.ops import serve as serve_ops

    settings = _ops_settings(env)
    address = f"{host or settings['ops']['host']}:{port or settings['ops']['port']}"
    click.echo(f"looplab ops on http://{address}: /metrics, POST /v1/alerts, /health; Ctrl-C stops", err=True)
    serve_ops(settings, host=host, port=port, log_level="warning")


@ops.command("render")
@_ENV_OPTION
@click.option("--check", is_flag=True, help="Only compare; exit 1 naming the files that differ from conf.")
def ops_render(env: str | None, check: bool) -> None:
    """Write the Prometheus rules and config, the Alertmanager config and the Kubernetes ingress from conf."""
    from looplab.ops_config import RENDERED, OpsError, render_all

    settings = _ops_settings(env)
    try:
        changed = render_all(settings, write=not check)
    except OpsError as error:
        raise click.ClickException(str(error)) from error
    if check:
        if changed:
            raise click.ClickException("out of date with conf (run `looplab ops render`): " + ", ".join(changed))
        click.echo(f"{len(RENDERED)} rendered files match conf")
        return
    for name in RENDERED:
        click.echo(f"{'wrote    ' if name in changed else 'unchanged'} {name}")


@ops.command("render-rules")
@_ENV_OPTION
def ops_render_rules(env: str | None) -> None:
    """Print the Prometheus recording and alert rules rendered from monitoring.slo and the retraining policy."""
    from looplab.ops_config import OpsError, render_rules

    settings = _ops_settings(env)
    try:
        click.echo(render_rules(settings["monitoring"], settings["retraining"]), nl=False)
    except OpsError as error:
        raise click.ClickException(str(error)) from error


# --- logs: the JSON logs of every looplab process and the gateway's access log ------------------
@click.command("logs")
@click.option("--since", default=None, help="Only records from then on: 90s, 30m, 1h, 2d, 1w, or a time (2026-12-03T18:00, UTC).")
@click.option("--level", type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False), default=None,
              help="Only records at this level or above (the gateway's lines: 4xx warning, 5xx error).")
@click.option("--component", default=None,
              help="Only this component (serving, gateway, replay, kedro, registry, ops, data, …) or looplab module (retraining).")
@click.option("--request-id", "request_id", default=None,
              help="Only the records of this request (the gateway's X-Request-ID), then its prediction-log rows and the monitoring window that scored them.")
@click.option("--env", default=None,
              help="The environment whose log folder is read, and only its records (default: the folder of $KEDRO_ENV or local, every record in it).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines.")
def logs(since: str | None, level: str | None, component: str | None, request_id: str | None, env: str | None, as_json: bool) -> None:
    """The JSON logs of every looplab process, and the gateway's access log, filtered and in time order.

    \b
    Follow one request from the gateway to the worker, its prediction-log rows and the
    monitoring window that scored them:                  looplab logs --request-id ID
    What went wrong in the last hour:                    looplab logs --since 1h --level warning
    """
    import sys

    import orjson

    from looplab.logs import LogQuery, format_record, log_files, parse_since, read_logs

    try:
        query = LogQuery(parse_since(since) if since else None, level, component, request_id, env)
        files = log_files(project_paths().root, env)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
    records = read_logs(files, query)
    if request_id is not None:  # past the logs: the request's rows in the prediction log, and their monitoring window
        from looplab.logs import record_time
        from looplab.trace import request_trace

        records += [record for record in request_trace(request_id, project_paths().root, env) if query.matches(record)]
        records.sort(key=record_time)
    if records:
        lines = (orjson.dumps(record).decode() for record in records) if as_json else map(format_record, records)
        sys.stdout.write("\n".join(lines) + "\n")
    else:
        click.echo(f"no matching records in {len(files)} log file(s)", err=True)
