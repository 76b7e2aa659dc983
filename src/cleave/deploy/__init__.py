"""``cleave build``: deployment artifacts for an app, checked before they are written.

- :mod:`~cleave.deploy.model`: what the targets need of an app and its plan.
- :mod:`~cleave.deploy.image`: the Dockerfile, the hash-locked requirements, the app.
- :mod:`~cleave.deploy.kubernetes`: kustomize base and overlays, NATS chart values.
- :mod:`~cleave.deploy.compose`: a compose file with a NATS cluster and PostgreSQL.
- :mod:`~cleave.deploy.github`: GitHub Actions workflows for the app's repository.
- :mod:`~cleave.deploy.monitoring`: Prometheus alert rules and a Grafana dashboard.
- :mod:`~cleave.deploy.checks`: what must hold, on the plan and on rendered manifests.
"""
