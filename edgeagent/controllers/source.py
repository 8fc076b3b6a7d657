"""Controllers delivered in a ConfigMap, reloaded when it changes.

The ConfigMap's ``data`` holds manifests (keys ``*.toml`` or ``*.controller.json``, the same keys as a file
manifest) and its ``binaryData`` the modules they name: ``module = "ring.wasm"`` means the binaryData key
``ring.wasm``. A module is checked like a file in the controllers directory would be: its digest lookup
name is ``controllers/<key>`` (see ``measured``), so a measured module cannot be swapped for another one
through the ConfigMap.

The host watches the one ConfigMap (a field-selected watch of its own). On a change each controller it
defines is reconciled by name: unchanged ones keep running; a new module or a new ``config`` means a fresh
start (the old snapshot is discarded, ``init`` runs); a change of watches, grants or limits alone keeps the
controller's state (its snapshot is handed over). A controller the ConfigMap no longer defines, or defines
with an error, is stopped; errors are reported with the ConfigMap's key in ``edgeagent controllers list``.
Deleting the ConfigMap stops all of them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edgeagent.controllers.host import ControllerHost
from edgeagent.controllers.manifest import Manifest, Watch, parse_manifest
from edgeagent.controllers.queue import SerialQueue
from edgeagent.errors import ClusterError, EdgeAgentError, ManifestError
from edgeagent.kube.api import KubeApi, resource_path, status_message
from edgeagent.kube.watch import Event, SharedWatch

log = logging.getLogger(__name__)

MODULE_BASE = Path("controllers")  # ConfigMap modules' names, as `edgeagent measure` names that directory


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str  # the data key of its manifest
    manifest: Manifest
    module: bytes
    sha256: str


def parse_configmap(obj: dict[str, Any], origin: str) -> tuple[dict[str, Entry], dict[str, str]]:
    """The controllers a ConfigMap defines, by name, and the errors of the keys that define none."""
    data = obj.get("data") or {}
    binary = obj.get("binaryData") or {}
    entries: dict[str, Entry] = {}
    errors: dict[str, str] = {}
    for key in sorted(data):
        if not (key.endswith(".toml") or key.endswith(".controller.json")):
            continue
        where = Path(f"{origin}/{key}")
        try:
            text = data[key]
            raw = json.loads(text) if key.endswith(".json") else tomllib.loads(text)
            manifest = parse_manifest(raw, source=where, base=MODULE_BASE)
            module_key = manifest.module.name
            if manifest.module.parent != MODULE_BASE:
                raise ManifestError(
                    f"manifest {where}: module must name a binaryData key, got {module_key!r}"
                )
            if module_key not in binary:
                raise ManifestError(f"manifest {where}: module {module_key!r} is not in the binaryData")
            try:
                module = base64.b64decode(binary[module_key], validate=True)
            except (binascii.Error, ValueError):
                raise ManifestError(f"manifest {where}: binaryData {module_key!r} is not base64") from None
            if manifest.name in entries:
                raise ManifestError(f"manifest {where}: controller {manifest.name} is defined twice")
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            errors[key] = f"manifest {where}: not valid {'JSON' if key.endswith('.json') else 'TOML'}: {e}"
            continue
        except ManifestError as e:
            errors[key] = str(e)
            continue
        entries[manifest.name] = Entry(key, manifest, module, hashlib.sha256(module).hexdigest())
    return entries, errors


class ConfigMapSource:
    """Loads the controllers of ConfigMap ``namespace/name`` into ``host`` and keeps them in step with it."""

    def __init__(
        self, host: ControllerHost, api: KubeApi, namespace: str, name: str, **watch_options: Any
    ) -> None:
        self.host = host
        self.api = api
        self.namespace, self.name = namespace, name
        self.origin = f"configmap {namespace}/{name}"
        self.reloads = 0
        self._watch_options = watch_options
        self._watch: SharedWatch | None = None
        # Its own thread: a reload waits for controllers' queues to drain, which needs the host's workers.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="configmap-source")
        self._queue: SerialQueue[Event] = SerialQueue(self._on_change, self._pool, name=self.origin)

    @property
    def path(self) -> str:
        return resource_path("", "v1", "configmaps", namespace=self.namespace, name=self.name)

    def load(self) -> list[str]:
        """The initial load (before the host starts). Raises ClusterError if the ConfigMap cannot be read."""
        resp = self.api.call("GET", self.path)
        if resp.status == 404:
            raise ClusterError(f"{self.origin} does not exist")
        if not 200 <= resp.status <= 299:
            raise ClusterError(f"cannot read {self.origin}: {resp.status} {status_message(resp.data)}")
        return self.apply(json.loads(resp.data))

    def start(self) -> None:
        """Watches the ConfigMap; its first list re-applies what ``load`` saw (no change: nothing happens)."""
        sw = SharedWatch(
            self.api,
            "",
            "v1",
            "configmaps",
            namespace=self.namespace,
            field_selector=f"metadata.name={self.name}",
            **self._watch_options,
        )
        sw.subscribe(
            Watch(group="", version="v1", kind="ConfigMap", plural="configmaps", namespace=self.namespace),
            self._queue.post,
        )
        self._watch = sw
        sw.start()

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        self._queue.wait_idle(timeout=30.0)
        self._pool.shutdown(wait=True)

    def wait_idle(self, timeout: float) -> bool:
        return self._queue.wait_idle(timeout)

    def _on_change(self, event: Event) -> None:
        if event.name != self.name:
            return
        obj = json.loads(event.raw).get("object") or {}
        if event.type == "DELETED":
            log.warning("%s was deleted: stopping its controllers", self.origin)
            obj = {}
        self.apply(obj)
        self.reloads += 1

    def apply(self, obj: dict[str, Any]) -> list[str]:
        """Reconciles the host's controllers from this source with ``obj``; returns the errors."""
        entries, errors = parse_configmap(obj, self.origin)
        current = {n: c for n, c in self.host.controllers.items() if c.origin == self.origin}
        for name in sorted(set(current) - set(entries)):
            log.info("%s: controller %s removed", self.origin, name)
            self.host.remove(name)
        for name, entry in entries.items():
            old = current.get(name)
            if old is not None and old.sha256 == entry.sha256 and old.manifest == entry.manifest:
                continue
            keep = (
                old is not None
                and old.sha256 == entry.sha256
                and old.manifest.config == entry.manifest.config
            )
            if old is not None:
                log.info(
                    "%s: controller %s changed (%s)", self.origin, name, "state kept" if keep else "fresh"
                )
                self.host.remove(name, keep_state=keep)
            try:
                self.host.add(entry.manifest, data=entry.module, origin=self.origin, resume=keep)
            except EdgeAgentError as e:
                log.error("%s", e)
                errors[entry.key] = str(e)
        self.host.set_failed_loads(self.origin, errors)
        return list(errors.values())
