"""The Kubernetes backend: jobs that may burst run as pods on a cluster's GPU nodes
(``pip install 'fleet[kubernetes]'``; ``backends: {kubernetes: {...}}`` in config.yaml).

Registered through the ``fleet.backends`` entry point like any plugin; the client library
(kubernetes_asyncio) is imported only when the backend is configured.
"""

from fleet.backends.kubernetes.backend import KubernetesBackend

__all__ = ["KubernetesBackend"]
