"""On-demand Wasm Kubernetes controllers: one host, shared watches, idle controllers swapped to disk.

Modules, one concept each:

- ``manifest``: a controller's manifest (module, watches, grants, limits) and its validation.
- ``selector``: Kubernetes label selectors, matched in the host.
- ``kubeapi``: the host's one API connection (official client transport), controller requests as JSON.
- ``watch``: one list+watch per kind (resourceVersion, bookmarks, relist on 410, backoff), fanned out.
- ``queue``: per-controller ordered queues on a small worker pool; the host's timer thread.
- ``host``: controllers' life cycle (load, verify, instantiate, swap out, wake, fail) and the status file.
- ``hosts``: the imports a controller sees (``edgeagent:controller/k8s``, ``/timer``, ``/log``).
- ``measured``: the digest lookup over ``edgeagent measure``'s event log, for module verification.

The guest side (WIT, C header, controllers) lives in the repository's controllers/ directory.
"""
