"""What must hold for a deployment to roll and stop cleanly; checked before anything is written.

On the plan (:func:`check_plan`):

- a consumer's ack wait exceeds the longest its handler may run, or JetStream
  redelivers an event while its first delivery is still being handled;
- the grace period covers the preStop pause and the longest handler, or a
  rollout kills handlers mid-way.

On rendered Kubernetes manifests (:func:`check_manifests`, also ``cleave build
--check DIR`` on a folder or on ``kubectl kustomize`` output, so a hand edit is
caught too): every Deployment has a PodDisruptionBudget, its three probes differ,
its drain on SIGTERM (``CLEAVE_GRACE``, ``cleave serve --grace``) covers the handler
timeouts of the plan in its ConfigMap, and its grace period covers preStop and the drain.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import yaml

from cleave.config import RuntimeSettings
from cleave.deploy import _yaml
from cleave.deploy.model import PRE_STOP, Deployment, consumer_policy, handler_timeout
from cleave.errors import ConfigError
from cleave.transport.base import ConsumerPolicy

__all__ = ["check_dir", "check_manifests", "check_plan"]

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
#: ``cleave serve --grace`` when CLEAVE_GRACE does not say.
DEFAULT_DRAIN = "30s"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    """``15s``, ``500ms``, ``2m`` or a plain number of seconds."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|h)?\s*", str(text))
    if match is None:
        raise ConfigError(f"CLEAVE_GRACE {text!r} is not a duration: write e.g. 15s or 2m")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _fail(problems: list[str], what: str) -> None:
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{what}: {len(problems)} problem(s)\n{lines}")


def check_plan(
    dep: Deployment, *, policy: ConsumerPolicy | None = None, grace: int | None = None
) -> None:
    """The plan's timeouts against each other, per group.

    ``policy`` and ``grace`` default to what the runtime and the manifests use; a
    deployer that sets its own (another consumer policy, a shorter grace) checks them here.
    """
    plan = dep.plan
    problems = []
    ack_wait = (policy or consumer_policy(plan)).ack_wait
    grace = dep.grace if grace is None else grace
    longest = handler_timeout(plan)
    for group in dep.groups:
        if group.subscribes and ack_wait <= plan.runtime.event_timeout:
            problems.append(
                f"group {group.name}: consumers wait {ack_wait:g} s for an ack but an event "
                f"handler may run {plan.runtime.event_timeout:g} s ([runtime] event_timeout); "
                "JetStream would redeliver events still being handled"
            )
    if grace < PRE_STOP + longest:
        problems.append(
            f"grace period {grace} s is shorter than preStop {PRE_STOP} s plus the longest "
            f"handler ({longest:g} s, [runtime] timeout / event_timeout)"
        )
    _fail(problems, f"{dep.app}: the plan cannot deploy safely")


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def _runtime(docs: list[dict[str, Any]]) -> RuntimeSettings:
    """The [runtime] of the plan shipped in a ConfigMap (its ``cleave.toml``)."""
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and "cleave.toml" in (doc.get("data") or {}):
            raw = tomllib.loads(doc["data"]["cleave.toml"])
            return msgspec.convert(raw.get("runtime", {}), RuntimeSettings)
    return RuntimeSettings()


def check_manifests(docs: Iterable[dict[str, Any]]) -> None:
    """PDBs, probes and grace periods of every Deployment in ``docs``."""
    docs = [d for d in docs if isinstance(d, dict)]
    runtime = _runtime(docs)
    longest = max(runtime.timeout, runtime.event_timeout)
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    problems = []
    for d in docs:
        if d.get("kind") != "Deployment":
            continue
        name = d["metadata"]["name"]
        ns = d["metadata"].get("namespace")
        template = d["spec"]["template"]
        labels = template.get("metadata", {}).get("labels", {})
        if not any(
            p["metadata"].get("namespace") == ns and _labels_match(p["spec"]["selector"], labels)
            for p in pdbs
        ):
            problems.append(
                f"Deployment {name} has no PodDisruptionBudget: a node drain may evict all its "
                "pods at once; add one whose selector matches its pod labels"
            )
        spec = template["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for c in spec.get("containers", []):
            where = f"Deployment {name} container {c['name']}"
            missing = [p for p in PROBES if p not in c]
            if missing:
                problems.append(f"{where} has no {', '.join(missing)}")
            else:
                seen = [yaml.safe_dump(c[p], sort_keys=True) for p in PROBES]
                if len(set(seen)) < len(seen):
                    problems.append(
                        f"{where}: startup, liveness and readiness probes must differ (each "
                        "asks another question: started, alive, ready for work)"
                    )
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            drain = _seconds(env.get("CLEAVE_GRACE") or DEFAULT_DRAIN)
            if drain < longest:
                problems.append(
                    f"{where}: CLEAVE_GRACE {drain:g} s (the drain on SIGTERM) is shorter than "
                    f"the longest handler ({longest:g} s, [runtime] timeout / event_timeout)"
                )
            if grace < pre_stop + max(drain, longest):
                problems.append(
                    f"{where}: terminationGracePeriodSeconds {grace} is shorter than preStop "
                    f"{pre_stop} s plus the drain ({max(drain, longest):g} s: CLEAVE_GRACE, and "
                    "the longest handler of [runtime] timeout / event_timeout): a rollout would "
                    "kill handlers mid-way"
                )
    _fail(problems, "the manifests cannot roll out safely")


def check_dir(path: Path) -> int:
    """:func:`check_manifests` on every YAML file under ``path``; the Deployments checked."""
    if not path.exists():
        raise ConfigError(f"{path} does not exist: give the folder `cleave build` wrote")
    files = [path] if path.is_file() else sorted(path.rglob("*.y*ml"))
    docs: list[dict[str, Any]] = []
    for file in files:
        try:
            docs += [d for d in _yaml.load_all(file.read_text()) if isinstance(d, dict)]
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    # The base's plan is a file next to its kustomization, not yet a ConfigMap.
    for toml in sorted(path.rglob("cleave.toml")) if path.is_dir() else []:
        docs.append({"kind": "ConfigMap", "data": {"cleave.toml": toml.read_text()}})
        break
    deployments = sum(1 for d in docs if d.get("kind") == "Deployment")
    if not deployments:
        raise ConfigError(f"{path} holds no Kubernetes Deployment to check")
    check_manifests(docs)
    return deployments
