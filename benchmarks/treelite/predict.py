"""treelite's side of `make bench-inference`, run in benchmarks/treelite/.venv: GTIL and tl2cgen-compiled libraries timed on the matrices looplab wrote.

    benchmarks/treelite/.venv/bin/python benchmarks/treelite/predict.py WORK --round N

WORK is the folder `benchmarks/inference/run.py` prepared: `manifest.json` (the models, the matrices,
the cells to time, the trusted types), each model's `HistGradientBoosting*` estimator saved with skops,
and the preprocessed matrices as `.npy`. The first round imports the models into treelite
(`treelite.sklearn.import_model`) and compiles each with tl2cgen (gcc) into `WORK/lib/`; every round
times the cells and writes `WORK/treelite-round-N.json` (per-call seconds), and the first round also
each method's predictions (`WORK/out/`) for the exactness check, which looplab's side does.

`time_calls` is the timing loop both sides use (looplab's side imports it from here), so the two
environments measure the same way. Nothing here imports looplab.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def time_calls(call, X, budget_s: float) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (the process's, all its threads) of each call `call(X)`: a few untimed warm-up
    calls, then calls until `budget_s` of wall time is spent — at least 20 (10 for large batches), at most
    enough for a stable p99 of the small ones. On a machine shared with other work the CPU time is the
    steadier figure: it leaves out the time the process waited for a core."""
    for _ in range(3):
        call(X)
    least, most = (20, 4000) if len(X) <= 100 else (10, 400)
    walls: list[float] = []
    cpus: list[float] = []
    spent = 0.0
    while len(walls) < least or (spent < budget_s and len(walls) < most):
        cpu, started = time.process_time(), time.perf_counter()
        call(X)
        took = time.perf_counter() - started
        cpus.append(time.process_time() - cpu)
        walls.append(took)
        spent += took
    return walls, cpus


def load_estimator(path: Path, trusted: list[str]):
    "The estimator looplab's side saved, loaded with skops against the trusted types it listed."
    import skops.io

    untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - set(trusted))
    if untrusted:
        raise SystemExit(f"bench-inference: {path} holds types outside the trusted list: {', '.join(untrusted)}")
    return skops.io.load(path, trusted=trusted)


def compile_library(model, name: str, variant: dict, train, lib: Path) -> tuple[Path, float]:
    "The treelite model compiled by tl2cgen into a shared library (one file per model and variant); its path and seconds."
    import tl2cgen

    lib.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    params = dict(variant["params"])
    if variant.get("annotate"):
        annotation = lib / f"{name}-{variant['name']}-annotation.json"
        tl2cgen.annotate_branch(model, tl2cgen.DMatrix(train), annotation, nthread=1)
        params["annotate_in"] = str(annotation)
    # one path per library: the dynamic loader hands back an already loaded library for a path it has seen
    path = lib / f"{name}-{variant['name']}.so"
    tl2cgen.export_lib(model, toolchain="gcc", libpath=str(path), params=params, nthread=2, options=variant.get("options"))
    return path, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--round", type=int, default=1)
    args = parser.parse_args(argv)
    import numpy as np
    import tl2cgen
    import treelite

    manifest = json.loads((args.work / "manifest.json").read_text(encoding="utf-8"))
    lib, out = args.work / "lib", args.work / "out"
    out.mkdir(exist_ok=True)
    setup: dict = {"treelite": treelite.__version__, "tl2cgen": tl2cgen.__version__}
    methods: dict = {}  # model → method → threads → callable(X)
    for name, model_info in manifest["models"].items():
        estimator = load_estimator(args.work / model_info["estimator"], manifest["trusted"])
        started = time.perf_counter()
        model = treelite.sklearn.import_model(estimator)
        setup[f"{name}_import_s"] = time.perf_counter() - started
        train = np.load(args.work / model_info["train"])
        by_method: dict = {}
        by_method["treelite GTIL"] = {threads: (lambda X, t=threads, m=model: treelite.gtil.predict(m, X, nthread=t))
                                      for threads in manifest["threads"]}
        for variant in manifest["tl2cgen_variants"]:
            path = lib / f"{name}-{variant['name']}.so"
            if not path.exists():
                path, seconds = compile_library(model, name, variant, train, lib)
                setup[f"{name}_{variant['name']}_compile_s"] = seconds
            for threads in manifest["threads"]:
                predictor = tl2cgen.Predictor(str(path), nthread=threads)
                by_method.setdefault(f"tl2cgen {variant['name']}", {})[threads] = (
                    lambda X, p=predictor: p.predict(tl2cgen.DMatrix(X)))
        methods[name] = by_method

    matrices = {key: np.load(args.work / file) for key, file in manifest["matrices"].items()}
    timings: list[dict] = []
    for cell in manifest["cells"]:
        X = matrices[cell["matrix"]]
        for method, by_threads in methods[cell["model"]].items():
            call = by_threads[cell["threads"]]
            if args.round == 1 and cell["threads"] == manifest["threads"][0]:
                np.save(out / f"{cell['matrix']}-{method.replace(' ', '_')}.npy",
                        np.asarray(call(X), dtype=np.float64).reshape(len(X), -1)[:, -1])
            times, cpu = time_calls(call, X, manifest["budget_s"])
            timings.append({**cell, "method": method, "seconds": times, "cpu_seconds": cpu})
            print(f"[treelite round {args.round}] {cell['model']}, {len(X)} rows, {cell['threads']} thread(s), {method}: "
                  f"median {1e6 * sorted(times)[len(times) // 2]:.1f} µs", file=sys.stderr, flush=True)
    (args.work / f"treelite-round-{args.round}.json").write_text(json.dumps({"setup": setup, "timings": timings}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
