"""deploy/kubernetes: valid against Kubernetes' schemas (offline: kubernetes-validate
ships them), rendered by `kubectl kustomize` where kubectl exists, and consistent with
what kubekv-entrypoint and the image expect."""

from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from kubekv_server import deploy_entrypoint as ep
from tests.deploy.conftest import DEPLOY

K8S = DEPLOY / "kubernetes"
# The oldest Kubernetes the manifests are meant for (policy/v1 PDBs, fsGroupChangePolicy
# and seccompProfile are GA there) and the newest the validator knows.
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="kubectl not installed (its `kustomize` renders)")


def base_documents() -> list[dict]:
    docs = []
    for path in sorted((K8S / "base").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def validate(docs: list[dict]) -> None:
    for doc in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_base_manifests_validate_offline():
    docs = base_documents()
    assert {d["kind"] for d in docs} == {"StatefulSet", "Service", "PodDisruptionBudget"}
    validate(docs)


def test_validator_rejects_a_broken_manifest():
    sts = by_kind(base_documents())[("StatefulSet", "kubekv")]
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pat"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate([sts])


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_statefulset_services_and_pdb_fit_together(tmp_path):
    objs = by_kind(base_documents())
    sts = objs[("StatefulSet", "kubekv")]
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    env = _env(container)
    assert spec["replicas"] == 3 == int(env["KUBEKV_INITIAL_CLUSTER_SIZE"])
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    # the headless Service: named as the StatefulSet's serviceName and the entrypoint's
    headless = objs[("Service", spec["serviceName"])]
    assert env["KUBEKV_PEER_SERVICE"] == spec["serviceName"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= labels.items()
    client = objs[("Service", "kubekv")]
    assert client["spec"]["selector"].items() <= labels.items()
    pdb = objs[("PodDisruptionBudget", "kubekv")]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # scheduling, resources, security
    assert pod["affinity"]["podAntiAffinity"]
    assert pod["enableServiceLinks"] is False
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"][
        "memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[ep.DEFAULT_DATA_ROOT] == "data"
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["data"]
    assert {v["name"]: v for v in pod["volumes"]}[mounts["/tmp"]]["emptyDir"] is not None
    # probes: etcd's paths, on the port the entrypoint gives the metrics listener
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {k: container[k]["httpGet"] for k in
              ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["startupProbe"]["path"] == probes["livenessProbe"]["path"] == "/livez"
    assert probes["readinessProbe"]["path"] == "/readyz"
    plan = ep.plan([], {**env, "KUBEKV_NAMESPACE": "db", "KUBEKV_DATA_ROOT": str(tmp_path)},
                   hostname="kubekv-0")
    flags = dict(a.removeprefix("--").split("=", 1) for a in plan.args)
    for probe in probes.values():
        assert flags["listen-metrics-urls"] == f"http://0.0.0.0:{ports[probe['port']]}"
    assert flags["listen-client-urls"].endswith(f":{ports['client']}")
    assert flags["listen-peer-urls"].endswith(f":{ports['peer']}")
    assert flags["advertise-client-urls"] == (
        f"http://kubekv-0.{spec['serviceName']}.db.svc.cluster.local:{ports['client']}")


def kustomize(path) -> list[dict]:
    res = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@needs_kubectl
def test_kustomize_renders_the_base_and_it_validates():
    docs = kustomize(K8S)
    validate(docs)
    assert by_kind(docs).keys() == by_kind(base_documents()).keys()


@needs_kubectl
def test_kustomize_renders_the_tls_overlay_and_it_validates(tmp_path):
    docs = kustomize(K8S / "overlays" / "tls")
    validate(docs)
    sts = by_kind(docs)[("StatefulSet", "kubekv")]
    pod = sts["spec"]["template"]["spec"]
    env = _env(pod["containers"][0])
    assert env["ETCD_CLIENT_CERT_AUTH"] == "true" and env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    secret_mounts = {v["name"] for v in pod["volumes"] if "secret" in v}
    mounted = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]
               if m["name"] in secret_mounts}
    for key in ("ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_TRUSTED_CA_FILE",
                "ETCD_PEER_CERT_FILE", "ETCD_PEER_KEY_FILE", "ETCD_PEER_TRUSTED_CA_FILE"):
        assert any(env[key].startswith(m + "/") for m in mounted), key
    # the entrypoint then advertises https:// on both ports
    plan = ep.plan([], {**env, "KUBEKV_NAMESPACE": "db", "KUBEKV_DATA_ROOT": str(tmp_path)},
                   hostname="kubekv-2")
    flags = dict(a.removeprefix("--").split("=", 1) for a in plan.args)
    assert flags["advertise-client-urls"].startswith("https://kubekv-2.")
    assert flags["initial-advertise-peer-urls"].startswith("https://kubekv-2.")
    assert flags["listen-metrics-urls"].startswith("http://")  # probes need no certificate
