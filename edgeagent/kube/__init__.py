"""The one Kubernetes layer of edgeagent, shared by the controllers host, the attestation controller and the
device's enrollment.

- ``transport``: how to reach the API server (urllib3 from a kubeconfig, the in-cluster account or explicit
  files; the official client's connection only where a kubeconfig needs it);
- ``api``: ``KubeApi``, raw JSON requests and watch streams over a transport;
- ``errors``: every request failure (``KubeApi``'s or the official client's) as the project's errors;
- ``watch``: ``SharedWatch``, the hardened list+watch loop one kind's subscribers share;
- ``queue``: ``DelayQueue``, keys due at a time (reconcile keys, timers);
- ``kubeconfig``: writing kubeconfig files.

It knows nothing of controllers, the cloud side, attestation or the agent: it imports only
``edgeagent.errors``
(and ``config``/``logs``) and third-party libraries. It never imports the official ``kubernetes`` client at
module level: the device and the controllers host do without its ~17 MB.
"""
