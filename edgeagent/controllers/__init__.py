"""On-demand Wasm Kubernetes controllers: one host, shared watches, idle controllers swapped to disk.

Modules, one concept each:

- ``manifest``: a controller's manifest (module, watches, grants, limits) and its validation.
- ``selector``: Kubernetes label selectors, matched in the host.
- ``watch``: ``WatchHub``, one shared watch per kind (``edgeagent.kube.watch``) fanned out to controllers by
  their manifests' watches.
- ``queue``: per-controller ordered queues on a small worker pool.
- ``host``: controllers' life cycle (load, verify, instantiate, swap out, wake, fail) and the status file.
- ``hosts``: the imports a controller sees (``edgeagent:controller/k8s``, ``/timer``, ``/log``).
- ``measured``: the digest lookup over ``edgeagent measure``'s event log, for module verification.
- ``source``: controllers from a ConfigMap, reloaded when it changes.
- ``service`` / ``__main__``: ``controllers run`` in its own lean process.

The Kubernetes layer (transport, ``KubeApi``, the shared watch, the delay queue behind the host's timers) is
``edgeagent.kube``. The guest side (WIT, C header, controllers) lives in the repository's controllers/
directory.
"""
