"""Kubernetes: a kustomize base and ``dev`` / ``prod`` overlays, built as data.

One Deployment per service group (``cleave serve --group``), one for the gateway,
a migration Job per database, and around them what a cluster asks of a good
tenant: probes, a restricted security context, PodDisruptionBudgets, HPAs,
ServiceAccounts without tokens, default-deny NetworkPolicies. NATS itself is the
official Helm chart, configured by ``nats-values.yaml``.

Metrics are scraped from the pods' admin port, found through the
``prometheus.io/*`` pod annotations: a Service would only add an object per group
that nothing else needs, since Prometheus scrapes every pod anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cleave.deploy import _yaml, planfile
from cleave.deploy.model import APP_DIR, PRE_STOP, Deployment, Group, env_name

__all__ = ["OVERLAYS", "render"]

OVERLAYS = ("dev", "prod")
UID = 10001
#: The NATS Helm chart's release: its pods, client Service and headless Service.
NATS = "nats"
NATS_POD = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": NATS}
#: Where the NATS client certificates' CA and the groups' credentials are mounted.
NATS_CA_DIR = "/etc/cleave/nats-ca"
NATS_CREDS_DIR = "/etc/cleave/nats"
MONITORING_NS = "monitoring"


def render(dep: Deployment, out: Path) -> None:
    """Write ``out/base``, ``out/overlays/{dev,prod}`` and ``out/nats-values.yaml``."""
    base = out / "base"
    base.mkdir(parents=True, exist_ok=True)
    (base / "cleave.toml").write_text(planfile.render(dep))
    files: dict[str, list[dict[str, Any]]] = {}
    for group in dep.groups:
        files[f"group-{group.slug}.yaml"] = _worker(dep, group)
    if dep.gateway:
        files["gateway.yaml"] = _gateway(dep)
    files["migrations.yaml"] = [_job(dep, s) for s in dep.databases]
    files["network-policies.yaml"] = _policies(dep)
    files = {k: v for k, v in files.items() if v}
    for name, docs in files.items():
        _yaml.write(base / name, *docs, header="Written by `cleave build`; rebuild, do not edit.")
    _yaml.write(
        base / "kustomization.yaml",
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "labels": [{"pairs": {"app.kubernetes.io/part-of": dep.slug}}],
            "resources": list(files),
            "configMapGenerator": [{"name": f"{dep.slug}-plan", "files": ["cleave.toml"]}],
            "images": [{"name": dep.slug, "newName": dep.slug, "newTag": dep.version}],
        },
    )
    for overlay in OVERLAYS:
        _overlay(dep, out / "overlays" / overlay, overlay)
    _yaml.write(
        out / "nats-values.yaml",
        nats_values(dep),
        header=(
            "Values for the official NATS Helm chart (nats/nats), in the app's namespace:\n"
            f"  helm install {NATS} nats/nats -n NAMESPACE -f nats-values.yaml"
        ),
    )


def _labels(dep: Deployment, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": dep.slug, "app.kubernetes.io/component": component}


def _meta(dep: Deployment, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "labels": _labels(dep, component)}


def nats_urls(dep: Deployment, scheme: str = "tls") -> str:
    """Every NATS pod, so a client reconnects to another when one goes away."""
    return ",".join(f"{scheme}://{NATS}-{i}.{NATS}-headless:4222" for i in range(3))


def _env(dep: Deployment, databases: tuple[str, ...], creds: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "CLEAVE_NATS_URL", "value": nats_urls(dep)},
        {"name": "CLEAVE_NATS_CA", "value": f"{NATS_CA_DIR}/ca.crt"},
        {"name": "CLEAVE_NATS_CREDENTIALS", "value": f"{NATS_CREDS_DIR}/{creds}.creds"},
        {"name": "CLEAVE_STATE_DIR", "value": "/tmp/cleave"},
        # The admin port answers the kubelet's probes and Prometheus on the pod's address.
        {"name": "CLEAVE_ADMIN_HOST", "value": "0.0.0.0"},
        # On SIGTERM, work in progress gets this long; the pod's grace period covers it.
        {"name": "CLEAVE_GRACE", "value": f"{dep.drain}s"},
    ]
    for service in databases:
        env.append(
            {
                "name": env_name(service),
                "valueFrom": {
                    "secretKeyRef": {"name": f"{dep.slug}-db-{service}", "key": "url"},
                },
            }
        )
    return env


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_spec(
    dep: Deployment,
    account: str,
    container: dict[str, Any],
    creds: str,
    *,
    needs_nats: bool = True,
) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"name": "plan", "mountPath": f"{APP_DIR}/cleave.toml", "subPath": "cleave.toml"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "plan", "configMap": {"name": f"{dep.slug}-plan"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
    if needs_nats:
        mounts += [
            {"name": "nats-ca", "mountPath": NATS_CA_DIR, "readOnly": True},
            {"name": "nats-creds", "mountPath": NATS_CREDS_DIR, "readOnly": True},
        ]
        volumes += [
            {"name": "nats-ca", "secret": {"secretName": "nats-ca"}},
            {"name": "nats-creds", "secret": {"secretName": f"{dep.slug}-nats-{creds}"}},
        ]
    container = {
        "name": "cleave",
        "image": dep.slug,
        "imagePullPolicy": "Always",
        **container,
        "volumeMounts": mounts,
        "securityContext": _container_security(),
    }
    return {
        "serviceAccountName": account,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }


def _probes(port: str, ready_path: str, live_path: str) -> dict[str, Any]:
    """Three different questions: started yet? still alive? take work now?"""
    return {
        # Up to 2 minutes to connect to NATS and the databases and subscribe.
        "startupProbe": {
            "httpGet": {"path": live_path, "port": port},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 60,
        },
        # Restart only a stuck event loop: a slow dependency must not kill the pod.
        "livenessProbe": {
            "httpGet": {"path": live_path, "port": port},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        # Out of rotation at once while it drains or cannot serve.
        "readinessProbe": {
            "httpGet": {"path": ready_path, "port": port},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
            "successThreshold": 1,
        },
    }


RESOURCES = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}


def _deployment(
    dep: Deployment,
    name: str,
    component: str,
    replicas: int,
    pod: dict[str, Any],
    annotations: dict[str, str],
) -> dict[str, Any]:
    labels = _labels(dep, component)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(dep, name, component),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": labels},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {"terminationGracePeriodSeconds": dep.grace, **pod},
            },
        },
    }


def _around(dep: Deployment, name: str, component: str, replicas: int) -> list[dict[str, Any]]:
    """What every Deployment comes with: its account, disruption budget and autoscaler."""
    labels = _labels(dep, component)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(dep, name, component),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(dep, name, component),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(dep, name, component),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": max(1, replicas),
                "maxReplicas": max(4, replicas * 2),
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
    ]


def _worker(dep: Deployment, group: Group) -> list[dict[str, Any]]:
    name = f"{dep.slug}-{group.slug}"
    port = dep.admin_port
    args = ["serve", APP_DIR, "--group", group.name, "--admin-port", str(port)]
    container = {
        "args": args,
        "env": _env(dep, group.databases, group.slug),
        "ports": [{"name": "admin", "containerPort": port}],
        **_probes("admin", "/readyz", "/healthz"),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP}}},
        "resources": RESOURCES,
    }
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
        "cleave.dev/services": ",".join(group.services),
    }
    pod = _pod_spec(dep, name, container, group.slug)
    return [
        _deployment(dep, name, group.slug, group.replicas, pod, annotations),
        *_around(dep, name, group.slug, group.replicas),
    ]


def _gateway(dep: Deployment) -> list[dict[str, Any]]:
    name = f"{dep.slug}-gateway"
    port = dep.gateway_port
    admin = dep.admin_port
    container = {
        "args": ["gateway", APP_DIR, "--port", str(port), "--admin-port", str(admin)],
        "env": _env(dep, (), "gateway"),
        "ports": [
            {"name": "http", "containerPort": port},
            {"name": "admin", "containerPort": admin},
        ],
        **_probes("admin", "/readyz", "/healthz"),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP}}},
        "resources": RESOURCES,
    }
    pod = _pod_spec(dep, name, container, "gateway")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(dep, name, "gateway"),
        "spec": {
            "selector": _labels(dep, "gateway"),
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(admin),
        "prometheus.io/path": "/metrics",
    }
    return [
        _deployment(dep, name, "gateway", 2, pod, annotations),
        service,
        *_around(dep, name, "gateway", 2),
    ]


def _job(dep: Deployment, service: str) -> dict[str, Any]:
    """Migrate one database; workers run with ``[database] migrate = false``."""
    component = f"migrate-{service}"
    container = {
        "args": ["db", "upgrade", APP_DIR, "--service", service],
        "env": [
            e
            for e in _env(dep, (service,), "")
            if e["name"] == "CLEAVE_STATE_DIR" or e["name"].startswith("CLEAVE_DATABASE_URL")
        ],
        "resources": RESOURCES,
    }
    pod = _pod_spec(dep, f"{dep.slug}-migrate", container, "", needs_nats=False)
    pod["restartPolicy"] = "Never"
    version = dep.version.replace(".", "-").replace("+", "-").lower()
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        # A Job's template cannot change: each release migrates under a new name.
        "metadata": _meta(dep, f"{dep.slug}-migrate-{service}-{version}", component),
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 600,
            "template": {"metadata": {"labels": _labels(dep, component)}, "spec": pod},
        },
    }


def _policy(dep: Deployment, name: str, selector: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": dep.slug}},
        "spec": {"podSelector": selector, **spec},
    }


def _to_nats() -> dict[str, Any]:
    return {"to": [{"podSelector": {"matchLabels": NATS_POD}}], "ports": [{"port": 4222}]}


def _to_database(dep: Deployment, service: str) -> dict[str, Any]:
    """Each database is selected by the label ``cleave.dev/database: <app>-<service>``."""
    return {
        "to": [{"podSelector": {"matchLabels": {"cleave.dev/database": f"{dep.slug}-{service}"}}}],
        "ports": [{"port": 5432}],
    }


def _from_monitoring(port: int) -> dict[str, Any]:
    return {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NS}}}
        ],
        "ports": [{"port": port}],
    }


def _policies(dep: Deployment) -> list[dict[str, Any]]:
    """Default deny; then each pod may reach exactly what it talks to."""
    part_of = {"app.kubernetes.io/part-of": dep.slug}
    policies = [
        _policy(dep, f"{dep.slug}-default-deny", {}, policyTypes=["Ingress", "Egress"]),
        _policy(
            dep,
            f"{dep.slug}-dns",
            {},
            policyTypes=["Egress"],
            egress=[
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                            },
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
                }
            ],
        ),
    ]
    for group in dep.groups:
        policies.append(
            _policy(
                dep,
                f"{dep.slug}-{group.slug}",
                {"matchLabels": _labels(dep, group.slug)},
                policyTypes=["Ingress", "Egress"],
                ingress=[_from_monitoring(dep.admin_port)],
                egress=[_to_nats(), *(_to_database(dep, s) for s in group.databases)],
            )
        )
    if dep.gateway:
        policies.append(
            _policy(
                dep,
                f"{dep.slug}-gateway",
                {"matchLabels": _labels(dep, "gateway")},
                policyTypes=["Ingress", "Egress"],
                ingress=[{"ports": [{"port": dep.gateway_port}]}, _from_monitoring(dep.admin_port)],
                egress=[_to_nats()],
            )
        )
    for service in dep.databases:
        policies.append(
            _policy(
                dep,
                f"{dep.slug}-migrate-{service}",
                {"matchLabels": _labels(dep, f"migrate-{service}")},
                policyTypes=["Egress"],
                egress=[_to_database(dep, service)],
            )
        )
    policies.append(
        _policy(
            dep,
            f"{dep.slug}-nats",
            {"matchLabels": NATS_POD},
            policyTypes=["Ingress", "Egress"],
            ingress=[
                {"from": [{"podSelector": {"matchLabels": part_of}}], "ports": [{"port": 4222}]},
                {
                    "from": [{"podSelector": {"matchLabels": NATS_POD}}],
                    "ports": [{"port": 4222}, {"port": 6222}],
                },
                _from_monitoring(8222),
            ],
            egress=[
                {
                    "to": [{"podSelector": {"matchLabels": NATS_POD}}],
                    "ports": [{"port": 4222}, {"port": 6222}],
                }
            ],
        )
    )
    return policies


PROFILES: dict[str, dict[str, Any]] = {
    "dev": {
        "min": 1,
        "max": 2,
        "resources": {
            "requests": {"cpu": "50m", "memory": "192Mi"},
            "limits": {"cpu": "500m", "memory": "384Mi"},
        },
    },
    "prod": {
        "min": 2,
        "max": 10,
        "resources": {
            "requests": {"cpu": "250m", "memory": "384Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
    },
}


def _overlay(dep: Deployment, path: Path, overlay: str) -> None:
    profile = PROFILES[overlay]
    namespace = dep.slug if overlay == "prod" else f"{dep.slug}-{overlay}"
    names = [f"{dep.slug}-{g.slug}" for g in dep.groups]
    if dep.gateway:
        names.append(f"{dep.slug}-gateway")
    replicas = {f"{dep.slug}-{g.slug}": g.replicas for g in dep.groups}
    if dep.gateway:
        replicas[f"{dep.slug}-gateway"] = 2
    counts = {
        n: max(profile["min"], r) if overlay == "prod" else profile["min"]
        for n, r in replicas.items()
    }
    _yaml.write(
        path / "namespace.yaml",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/warn": "restricted",
                },
            },
        },
    )
    _yaml.write(
        path / "kustomization.yaml",
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": namespace,
            "resources": ["namespace.yaml", "../../base"],
            "replicas": [{"name": n, "count": counts[n]} for n in names],
            "images": [{"name": dep.slug, "newName": dep.slug, "newTag": dep.version}],
            "patches": [
                {
                    "target": {"kind": "Deployment"},
                    "patch": _yaml.dump(
                        [
                            {
                                "op": "replace",
                                "path": "/spec/template/spec/containers/0/resources",
                                "value": profile["resources"],
                            }
                        ]
                    ),
                },
                {
                    "target": {"kind": "HorizontalPodAutoscaler"},
                    "patch": _yaml.dump(
                        [
                            {"op": "replace", "path": "/spec/minReplicas", "value": profile["min"]},
                            {"op": "replace", "path": "/spec/maxReplicas", "value": profile["max"]},
                        ]
                    ),
                },
            ],
        },
    )


def nats_values(dep: Deployment) -> dict[str, Any]:
    """The chart's values: a 3-node cluster, JetStream on disk, TLS everywhere, a PDB."""
    return {
        "config": {
            "cluster": {
                "enabled": True,
                "replicas": 3,
                "tls": {"enabled": True, "secretName": "nats-cluster-tls"},
            },
            "nats": {"tls": {"enabled": True, "secretName": "nats-client-tls"}},
            "jetstream": {
                "enabled": True,
                "fileStore": {
                    "enabled": True,
                    "dir": "/data",
                    "pvc": {"enabled": True, "size": "10Gi"},
                },
                "memoryStore": {"enabled": False},
            },
            "monitor": {"enabled": True, "port": 8222},
        },
        "podDisruptionBudget": {"enabled": True},
        "container": {
            "merge": {
                "resources": {
                    "requests": {"cpu": "250m", "memory": "512Mi"},
                    "limits": {"memory": "1Gi"},
                },
            }
        },
        "podTemplate": {
            "topologySpreadConstraints": {
                "kubernetes.io/hostname": {"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}
            }
        },
    }
