"""The Kubernetes manifests in ``deploy/k8s``, rendered by the real ``kubectl kustomize``
and validated offline against the Kubernetes OpenAPI schemas (``kubernetes-validate``,
strict: unknown fields are errors). KEDA's ScaledObject is a CRD the Kubernetes schemas do
not cover: it is validated against ``keda_scaledobject.schema.json``, written from KEDA's
documented fields. Then what the schema cannot see: every path ``cloud.yaml`` names is
mounted, every referenced ConfigMap/Secret/PVC exists, the admin port is never exposed,
the Services carry exactly the ZeroMQ and metrics ports, the key Secrets hold the files
the key tools wrote."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cloud_core.config import parse_config
from tests.deploy import render

SCHEMA = json.loads((Path(__file__).parent / "keda_scaledobject.schema.json").read_text())
#: Kubernetes versions the manifests must validate against: the newest the validator
#: ships and the oldest still commonly run.
K8S_VERSIONS = (kubernetes_validate.latest_version(), "1.29.0")
CRDS = {("keda.sh/v1alpha1", "ScaledObject"): SCHEMA}


@pytest.fixture(scope="module", autouse=True)
def _need_kubectl() -> None:
    if shutil.which("kubectl") is None:
        print("SKIP deploy manifests: kubectl not installed")
        pytest.skip("kubectl not installed (it renders the kustomizations)")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render.copy_tree(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[str, render.Rendered]:
    out = {o: render.Rendered(o, render.kustomize(tree, f"overlays/{o}"), tree / "base" / "secrets")
           for o in render.OVERLAYS}
    variant = render.with_component(tree, "cpu", "hpa")
    out["cpu-hpa"] = render.Rendered("cpu-hpa", render.kustomize(tree, variant),
                                     tree / "base" / "secrets")
    return out


def _cloud_yaml(r: render.Rendered) -> dict[str, Any]:
    cm = r.one("ConfigMap", "tiersplit-cloud-config")
    return yaml.safe_load(cm["data"]["cloud.yaml"])


def _core(r: render.Rendered) -> dict[str, Any]:
    return r.one("Deployment", "tiersplit-cloud")["spec"]["template"]["spec"]


def test_every_overlay_renders_the_whole_set(rendered: dict[str, render.Rendered]) -> None:
    for name, r in rendered.items():
        kinds = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0]
                  if d["kind"] in ("ConfigMap", "Secret") else d["metadata"]["name"])
                 for d in r.docs}
        for want in [("Deployment", "tiersplit-cloud"), ("Service", "tiersplit-cloud"),
                     ("Service", "tiersplit-cloud-pods"),
                     ("PodDisruptionBudget", "tiersplit-cloud"),
                     ("NetworkPolicy", "tiersplit-cloud"), ("Namespace", "tiersplit"),
                     ("PersistentVolumeClaim", "tiersplit-bundles")]:
            assert want in kinds, (name, want)
        assert r.find("ConfigMap", "tiersplit-cloud-config")
        assert r.find("Secret", "tiersplit-cloud-keys") and r.find("Secret", "tiersplit-agents")
        scaler = ("HorizontalPodAutoscaler" if name.endswith("-hpa") else "ScaledObject")
        assert len(r.find(scaler)) == 1, (name, scaler)
        for d in r.docs:
            if d["kind"] != "Namespace":
                assert d["metadata"]["namespace"] == "tiersplit", (name, d["kind"])
    assert rendered["gpu-triton"].find("Deployment", "tiersplit-triton")
    assert rendered["mqtt"].find("Deployment", "tiersplit-mqtt")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schema(
        rendered: dict[str, render.Rendered], version: str) -> None:
    checked = 0
    for name, r in rendered.items():
        for d in r.docs:
            key = (d["apiVersion"], d["kind"])
            if key in CRDS:
                jsonschema.validate(d, CRDS[key])
            else:
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    pytest.fail(f"{name}: {d['kind']} {d['metadata']['name']}: {e.message} "
                                f"at {list(e.path)}")
            checked += 1
    assert checked >= 4 * 12


def test_the_validators_catch_what_they_should(rendered: dict[str, render.Rendered]) -> None:
    """The validators above are not vacuous: a typo'd field fails each of them."""
    dep = json.loads(json.dumps(rendered["cpu"].one("Deployment", "tiersplit-cloud")))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)
    so = json.loads(json.dumps(rendered["cpu"].one("ScaledObject", "tiersplit-cloud")))
    so["spec"]["triggers"][0]["metadata"]["threshold"] = 8
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, SCHEMA)
    del so["spec"]["triggers"][0]["metadata"]["threshold"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, SCHEMA)


def test_services_expose_only_zmq_and_metrics(rendered: dict[str, render.Rendered]) -> None:
    for name, r in rendered.items():
        cfg = _cloud_yaml(r)
        http_port = cfg["http"]["port"]
        zmq_port = int(next(t for t in cfg["transports"] if t["kind"] == "zmq")
                       ["endpoints"][0].rsplit(":", 1)[1])
        for svc in ("tiersplit-cloud", "tiersplit-cloud-pods"):
            ports = r.one("Service", svc)["spec"]["ports"]
            assert sorted(p["port"] for p in ports) == sorted([zmq_port, http_port]), name
        core = next(c for c in _core(r)["containers"] if c["name"] == "core")
        assert sorted(p["containerPort"] for p in core["ports"]) == sorted([zmq_port, http_port])
        assert cfg["http"]["host"] == "0.0.0.0", "probes and scrapes come from outside the pod"
        assert "admin_token_file" not in cfg["http"], "the admin API has its own listener"
        assert cfg["admin"]["host"] == "127.0.0.1", "the admin API stays inside the pod"
        assert cfg["admin"]["token_file"], "port-forwarded admin calls still need a token"
        assert cfg["admin"]["port"] not in (http_port, zmq_port)


def _mounts(r: render.Rendered) -> dict[str, dict[str, Any]]:
    """mountPath -> volume of the core container."""
    spec = _core(r)
    volumes = {v["name"]: v for v in spec["volumes"]}
    core = next(c for c in spec["containers"] if c["name"] == "core")
    return {m["mountPath"]: volumes[m["name"]] for m in core["volumeMounts"]}


def _secret_files(r: render.Rendered, volume: dict[str, Any]) -> set[str]:
    secret = r.one("Secret", volume["secret"]["secretName"])
    items = volume["secret"].get("items")
    return {i["path"] for i in items} if items else set(secret["data"])


def test_every_path_in_cloud_yaml_is_mounted(rendered: dict[str, render.Rendered]) -> None:
    for name, r in rendered.items():
        cfg = _cloud_yaml(r)
        mounts = _mounts(r)
        init = " ".join(" ".join(c["command"]) for c in _core(r)["initContainers"])
        copied = set(re.findall(r"/secrets/\S+/([\w.-]+)", init))

        def provided(path: str, is_dir: bool = False, *, name: str = name, mounts=mounts,
                     copied=copied, r: render.Rendered = r) -> None:
            p = Path(path)
            if is_dir:
                assert path in mounts, f"{name}: {path} is not a mount"
                return
            vol = mounts.get(str(p.parent))
            assert vol is not None, f"{name}: {p.parent} is not a mount"
            if "secret" in vol:
                assert p.name in _secret_files(r, vol), f"{name}: {path} not in its Secret"
            elif "emptyDir" in vol:
                assert p.name in copied, f"{name}: {path} is not copied in by the init step"
            elif "configMap" in vol:
                assert p.name in r.one("ConfigMap", vol["configMap"]["name"])["data"]

        provided(cfg["repository"], is_dir=True)
        provided(cfg["signing_public_key"])
        provided(cfg["admin"]["token_file"])
        for t in cfg["transports"]:
            provided(t["secret_key"])
            provided(t["allowed_keys_dir"], is_dir=True)
            if t["kind"] == "mqtt":
                provided(t["broker"]["ca_file"])
                provided(t["broker"]["password_file"])
        args = next(c for c in _core(r)["containers"] if c["name"] == "core")["args"]
        config_path = Path(args[args.index("--config") + 1])
        assert config_path.name in r.one("ConfigMap", "tiersplit-cloud-config")["data"]
        assert mounts[str(config_path.parent)]["configMap"]["name"].startswith(
            "tiersplit-cloud-config-")


def test_every_referenced_object_exists(rendered: dict[str, render.Rendered]) -> None:
    for name, r in rendered.items():
        names = {(d["kind"], d["metadata"]["name"]) for d in r.docs}
        for dep in r.find("Deployment"):
            spec = dep["spec"]["template"]["spec"]
            for v in spec["volumes"]:
                if "secret" in v:
                    assert ("Secret", v["secret"]["secretName"]) in names, (name, v)
                if "configMap" in v:
                    assert ("ConfigMap", v["configMap"]["name"]) in names, (name, v)
                if "persistentVolumeClaim" in v:
                    assert ("PersistentVolumeClaim",
                            v["persistentVolumeClaim"]["claimName"]) in names, (name, v)
            for c in spec.get("initContainers", []) + spec["containers"]:
                for src in c.get("envFrom", []):
                    assert ("ConfigMap", src["configMapRef"]["name"]) in names, (name, c)
                port_names = {p["name"] for p in c.get("ports", [])}
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    if probe in c:
                        how = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                        assert how["port"] in port_names, (name, c["name"], probe)
            labels = dep["spec"]["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v
                       for k, v in dep["spec"]["selector"]["matchLabels"].items())
        target = (r.find("ScaledObject") or r.find("HorizontalPodAutoscaler"))[0]
        assert ("Deployment", target["spec"]["scaleTargetRef"]["name"]) in names
        for svc in r.find("Service"):
            sel = svc["spec"]["selector"]
            assert any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                           for k, v in sel.items()) for d in r.find("Deployment")), svc


def test_key_secrets_carry_the_files_the_key_tools_wrote(
        rendered: dict[str, render.Rendered], tree: Path) -> None:
    r = rendered["mqtt"]
    base, mqtt = tree / "base" / "secrets", tree / "overlays" / "mqtt" / "secrets"

    def data(secret: str, key: str) -> bytes:
        return base64.b64decode(r.one("Secret", secret)["data"][key])

    assert data("tiersplit-cloud-keys", "cloud.key") == (base / "cloud.key").read_bytes()
    assert data("tiersplit-cloud-keys", "signing.pub") == (base / "signing.pub").read_bytes()
    assert data("tiersplit-agents", f"{render.AGENT}.pub") == (
        base / "agents" / f"{render.AGENT}.pub").read_bytes()
    assert data("tiersplit-admin-token", "token") == (base / "admin.token").read_bytes()
    assert data("tiersplit-cloud-mqtt", "cloud-x25519.key") == (
        mqtt / "cloud-x25519.key").read_bytes()
    assert data("tiersplit-agents-x25519", f"{render.AGENT}.pub") == (
        mqtt / "agents-x25519" / f"{render.AGENT}.pub").read_bytes()
    # Allow-lists keep their names (updated in place, reloaded without a restart); key
    # Secrets get a content hash (a new key rolls the pods).
    assert r.find("Secret", "tiersplit-agents")[0]["metadata"]["name"] == "tiersplit-agents"
    assert r.one("Secret", "tiersplit-cloud-keys")["metadata"]["name"] != "tiersplit-cloud-keys"
    # The core's secret key reaches it as a 0600 copy; Secret volumes are never 0600 under
    # fsGroup, and the core refuses group-readable secret keys.
    init = _core(r)["initContainers"][0]["command"][-1]
    assert "install -m 0600 /secrets/keys/cloud.key" in init


def test_cloud_yaml_of_every_overlay_is_a_valid_core_config(
        rendered: dict[str, render.Rendered]) -> None:
    for name, r in rendered.items():
        doc = _cloud_yaml(r)
        cfg = parse_config(doc, source=f"{name} ConfigMap")
        assert cfg.http.enabled and cfg.http.port == 9300
        assert cfg.grace_s < _core(r)["terminationGracePeriodSeconds"]
        assert not cfg.allow_unsigned and cfg.signing_public_key is not None


def test_admin_api_needs_the_mounted_token(rendered: dict[str, render.Rendered]) -> None:
    """The admin API has its own loopback listener in every ConfigMap, and still requires
    the bearer token mounted from Secret ``tiersplit-admin-token`` (port-forwards reach it)."""
    for name, r in rendered.items():
        cfg = parse_config(_cloud_yaml(r), source=f"{name} ConfigMap")
        assert cfg.admin.host == "127.0.0.1" and cfg.admin.port == 9301, name
        assert str(cfg.admin.token_file) == "/etc/tiersplit/admin/token", name


def test_gpu_triton_overlay_puts_triton_on_gpus(rendered: dict[str, render.Rendered]) -> None:
    r = rendered["gpu-triton"]
    cfg = _cloud_yaml(r)
    assert cfg["backend"]["kind"] == "triton"
    host, port = cfg["backend"]["triton_url"].rsplit(":", 1)
    svc = r.one("Service", host)
    assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
    spec = r.one("Deployment", "tiersplit-triton")["spec"]["template"]["spec"]
    triton = spec["containers"][0]
    for section in ("requests", "limits"):
        assert triton["resources"][section]["nvidia.com/gpu"] == 1
    repo = next(a.split("=", 1)[1] for a in triton["args"] if a.startswith("--model-repository"))
    volumes = {v["name"]: v for v in spec["volumes"]}
    mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == repo)
    assert mount["name"] in volumes
    export = next(c for c in spec["initContainers"] if c["name"] == "export")
    script = export["command"][-1]
    assert "tiersplit cloud export-triton" in script and "--gpu" in script
    assert f"--out {repo}" in script and "--public-key" in script
    assert any(m["name"] == mount["name"] for m in export["volumeMounts"])
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec["tolerations"])


def test_mqtt_overlay_wires_core_and_broker(rendered: dict[str, render.Rendered]) -> None:
    r = rendered["mqtt"]
    cfg = _cloud_yaml(r)
    mqtt = next(t for t in cfg["transports"] if t["kind"] == "mqtt")
    svc = r.one("Service", mqtt["broker"]["host"])
    assert mqtt["broker"]["port"] in [p["port"] for p in svc["spec"]["ports"]]
    assert mqtt["broker"]["tls"] is True and mqtt["group"]
    conf = r.one("ConfigMap", "tiersplit-mosquitto-config")["data"]
    assert f"listener {mqtt['broker']['port']}" in conf["mosquitto.conf"]
    assert "allow_anonymous false" in conf["mosquitto.conf"]
    assert f"user {mqtt['broker']['username']}" in conf["acl"]
    assert f"topic read {mqtt['prefix']}/req/#" in conf["acl"]
    spec = r.one("Deployment", "tiersplit-mqtt")["spec"]["template"]["spec"]
    mounted = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    for line in conf["mosquitto.conf"].splitlines():
        key, _, value = line.partition(" ")
        if key in ("cafile", "certfile", "keyfile", "password_file", "acl_file"):
            assert str(Path(value).parent) in mounted, line


def test_autoscalers_scale_on_the_queue_depth(rendered: dict[str, render.Rendered]) -> None:
    so = rendered["cpu"].one("ScaledObject", "tiersplit-cloud")
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert "tiersplit_cloud_queue_depth" in trigger["metadata"]["query"]
    hpa = rendered["cpu-hpa"].one("HorizontalPodAutoscaler", "tiersplit-cloud")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "tiersplit_cloud_queue_depth"
    rules = yaml.safe_load(rendered["cpu-hpa"].one("ConfigMap", "tiersplit-adapter-rules")
                           ["data"]["config.yaml"])
    assert rules["rules"][0]["name"]["as"] == "tiersplit_cloud_queue_depth"
