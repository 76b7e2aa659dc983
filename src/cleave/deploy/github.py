"""GitHub Actions for the app's repository: test what changed, check contracts, ship.

One workflow, ``<app>.yml``:

- ``changes`` finds which services changed (``dorny/paths-filter``, with a filter per
  service made of its module, contract and migrations; the plan and the app module
  count for every service);
- ``test`` runs a matrix over those services only;
- ``contracts`` runs ``cleave contracts check`` on every change;
- ``checks`` is the one to mark required: it passes when ``test`` was skipped
  because no service changed, and fails if anything that ran failed;
- on ``main``, ``image`` builds and pushes the image (``cleave build`` writes the
  context) and ``rollout`` applies the prod overlay, waits for the migration Jobs, then
  for each Deployment.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from cleave.deploy import _yaml
from cleave.deploy.model import Deployment

__all__ = ["path", "render", "workflow"]

CHECKOUT = "actions/checkout@v5"
SETUP_PYTHON = "actions/setup-python@v6"
PATHS_FILTER = "dorny/paths-filter@v4"


def _repo_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


def _prefix(dep: Deployment) -> str:
    rel = dep.root.resolve().relative_to(_repo_root(dep.root.resolve())).as_posix()
    return "" if rel == "." else rel + "/"


def filters(dep: Deployment) -> dict[str, list[str]]:
    """paths-filter's filters: each service's own files, and what every service shares."""
    prefix = _prefix(dep)
    shared = [f"{prefix}cleave.toml", f"{prefix}requirements.txt"]
    target = (dep.plan.app.target or "app:app").partition(":")[0]
    shared.append(prefix + target.replace(".", "/") + ".py")
    out = {}
    for service, paths in dep.folders.items():
        own = [prefix + p + ("" if p.endswith(".py") else "/**") for p in paths]
        out[service] = own + shared
    return out


def _install(dep: Deployment) -> dict[str, Any]:
    version = importlib.metadata.version("cleave")
    prefix = _prefix(dep)
    return {
        "name": "Install",
        "run": (
            f'pip install "cleave=={version}" pytest\n'
            f'if [ -f "{prefix}requirements.txt" ]; then\n'
            f'  pip install -r "{prefix}requirements.txt"\n'
            "fi\n"
        ),
    }


def workflow(dep: Deployment) -> dict[str, Any]:
    prefix = _prefix(dep)
    app_dir = prefix.rstrip("/") or "."
    setup = [
        {"uses": CHECKOUT},
        {"uses": SETUP_PYTHON, "with": {"python-version": "3.11"}},
        _install(dep),
    ]
    filter_text = _yaml.dump(filters(dep))
    registry_image = "ghcr.io/${{ github.repository }}/" + dep.slug
    jobs: dict[str, Any] = {
        "changes": {
            "runs-on": "ubuntu-latest",
            "permissions": {"contents": "read", "pull-requests": "read"},
            "outputs": {"services": "${{ steps.filter.outputs.changes }}"},
            "steps": [
                {"uses": CHECKOUT},
                {"id": "filter", "uses": PATHS_FILTER, "with": {"filters": filter_text}},
            ],
        },
        "test": {
            "needs": "changes",
            "if": "${{ needs.changes.outputs.services != '[]' }}",
            "runs-on": "ubuntu-latest",
            "strategy": {
                "fail-fast": False,
                "matrix": {"service": "${{ fromJSON(needs.changes.outputs.services) }}"},
            },
            "steps": [
                *setup,
                {
                    "name": "Test ${{ matrix.service }}",
                    "env": {"SERVICE": "${{ matrix.service }}"},
                    "working-directory": app_dir,
                    # Tests named after the service (file, class or function) run for it.
                    "run": 'python -m pytest -q -k "$SERVICE"\n',
                },
            ],
        },
        "contracts": {
            "runs-on": "ubuntu-latest",
            "steps": [
                *setup,
                {"name": "Contracts", "run": f"cleave contracts check {app_dir}\n"},
            ],
        },
        "checks": {
            # The required check: passes when no service changed and `test` was skipped.
            "if": "${{ always() }}",
            "needs": ["changes", "test", "contracts"],
            "runs-on": "ubuntu-latest",
            "steps": [
                {
                    "name": "Every job that ran passed",
                    "env": {
                        "CHANGES": "${{ needs.changes.result }}",
                        "TESTS": "${{ needs.test.result }}",
                        "CONTRACTS": "${{ needs.contracts.result }}",
                    },
                    "run": (
                        'echo "changes=$CHANGES test=$TESTS contracts=$CONTRACTS"\n'
                        'test "$CHANGES" = success\n'
                        'test "$CONTRACTS" = success\n'
                        'case "$TESTS" in success|skipped) ;; *) exit 1 ;; esac\n'
                    ),
                }
            ],
        },
        "image": {
            "if": "${{ github.event_name == 'push' && github.ref == 'refs/heads/main' }}",
            "needs": "checks",
            "runs-on": "ubuntu-latest",
            "permissions": {"contents": "read", "packages": "write"},
            "steps": [
                *setup,
                {
                    "name": "Build context",
                    "run": f"cleave build {app_dir} --target kubernetes --out deploy --force\n",
                },
                {
                    "name": "Log in to the registry",
                    "env": {"TOKEN": "${{ secrets.GITHUB_TOKEN }}", "ACTOR": "${{ github.actor }}"},
                    "run": 'echo "$TOKEN" | docker login ghcr.io -u "$ACTOR" --password-stdin\n',
                },
                {
                    "name": "Build and push",
                    "env": {"IMAGE": f"{registry_image}:" + "${{ github.sha }}"},
                    "run": 'docker build -t "$IMAGE" deploy/image\ndocker push "$IMAGE"\n',
                },
            ],
        },
        "rollout": {
            "needs": "image",
            "runs-on": "ubuntu-latest",
            "environment": "production",
            "concurrency": {"group": f"rollout-{dep.slug}", "cancel-in-progress": False},
            "steps": [
                *setup,
                {
                    "name": "Manifests",
                    "run": f"cleave build {app_dir} --target kubernetes --out deploy --force\n",
                },
                {
                    "name": "Apply and wait",
                    "env": {
                        "KUBECONFIG_DATA": "${{ secrets.KUBECONFIG }}",
                        "IMAGE": registry_image,
                        "TAG": "${{ github.sha }}",
                    },
                    "run": (
                        'echo "$KUBECONFIG_DATA" > "$RUNNER_TEMP/kubeconfig"\n'
                        'export KUBECONFIG="$RUNNER_TEMP/kubeconfig"\n'
                        "cd deploy/kubernetes/overlays/prod\n"
                        f'kustomize edit set image "{dep.slug}=$IMAGE:$TAG"\n'
                        "kubectl apply -k .\n"
                        f"kubectl -n {dep.slug} wait --for=condition=complete job "
                        f"-l app.kubernetes.io/part-of={dep.slug} --timeout=10m\n"
                        f"kubectl -n {dep.slug} rollout status deployment "
                        f"-l app.kubernetes.io/part-of={dep.slug} --timeout=10m\n"
                    ),
                },
            ],
        },
    }
    return {
        "name": f"{dep.app}",
        "on": {"push": {"branches": ["main"]}, "pull_request": {}},
        "permissions": {"contents": "read"},
        "concurrency": {
            "group": "${{ github.workflow }}-${{ github.ref }}",
            "cancel-in-progress": True,
        },
        "jobs": jobs,
    }


def path(dep: Deployment, out: Path) -> Path:
    return out / ".github" / "workflows" / f"{dep.slug}.yml"


def render(dep: Deployment, out: Path) -> None:
    _yaml.write(
        path(dep, out),
        workflow(dep),
        header=f"CI and delivery of {dep.app}: written by `cleave build --target github`.",
    )
