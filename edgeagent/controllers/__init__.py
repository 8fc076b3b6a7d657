"""On-demand Wasm Kubernetes controllers: one host, shared watches, idle controllers swapped to disk.

Modules, one concept each:

- ``manifest``: a controller's manifest (module, watches, grants, limits) and its validation.
- ``selector``: Kubernetes label selectors, matched in the host.
- ``transport``: HTTPS to the API server on urllib3 from a kubeconfig / in-cluster (official client only as
  a fallback for exec plugins and the like).
- ``kubeapi``: the host's one API connection, controller requests as JSON.
- ``watch``: one list+watch per kind (resourceVersion, bookmarks, relist on 410, backoff), fanned out.
- ``queue``: per-controller ordered queues on a small worker pool; the host's timer thread.
- ``host``: controllers' life cycle (load, verify, instantiate, swap out, wake, fail) and the status file.
- ``hosts``: the imports a controller sees (``edgeagent:controller/k8s``, ``/timer``, ``/log``).
- ``measured``: the digest lookup over ``edgeagent measure``'s event log, for module verification.
- ``source``: controllers from a ConfigMap, reloaded when it changes.
- ``service`` / ``__main__``: ``controllers run`` in its own lean process.

The guest side (WIT, C header, controllers) lives in the repository's controllers/ directory.
"""
