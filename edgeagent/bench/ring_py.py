"""The ring controller in plain Python on the official kubernetes client: the benchmark's baselines.

``python -m edgeagent.bench.ring_py --kubeconfig K --label L NS:NEXT [NS:NEXT ...]`` runs one controller per
NS:NEXT pair in this process. With one pair it is the container-style baseline (c): a process per controller,
each with its own client and watch. With all pairs it is baseline (d): every controller a plain object in one
process, sharing one watch like the Wasm host does, but with no isolation at all. Either way a controller does
what controllers/ring/ring.c does: copy ``spec.nonce`` of the Ring "ring" (edgeagent.io/v1alpha1) in NS to
NEXT unless it is the nonce it forwarded last.

Prints ``ready`` once its watch cannot miss a change (it resumes from its initial list's resourceVersion).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes import watch as kwatch

GROUP, VERSION, PLURAL = "edgeagent.io", "v1alpha1", "rings"


class RingController:
    def __init__(self, custom: Any, namespace: str, next_namespace: str) -> None:
        self.custom = custom
        self.namespace = namespace
        self.next = next_namespace
        self.last = ""

    def handle(self, obj: dict[str, Any]) -> None:
        nonce = (obj.get("spec") or {}).get("nonce", "")
        if not nonce or nonce == self.last:
            return
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.next, PLURAL, "ring", {"spec": {"nonce": nonce}}
        )
        self.last = nonce


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--label", required=True, help="label selector of the ring's ConfigMaps")
    p.add_argument("pairs", nargs="+", help="NAMESPACE:NEXT_NAMESPACE")
    args = p.parse_args(argv)
    custom = kclient.CustomObjectsApi(kconfig.new_client_from_config(args.kubeconfig))
    controllers = {}
    for pair in args.pairs:
        ns, _, nxt = pair.partition(":")
        controllers[ns] = RingController(custom, ns, nxt)
    if len(controllers) == 1:
        (ns,) = controllers
        lister: Any = custom.list_namespaced_custom_object
        list_args: tuple[Any, ...] = (GROUP, VERSION, ns, PLURAL)
    else:
        lister, list_args = custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
    initial = lister(*list_args, label_selector=args.label)
    for obj in initial["items"]:
        ctl = controllers.get(obj["metadata"]["namespace"])
        if ctl is not None:
            ctl.handle(obj)
    rv = initial["metadata"]["resourceVersion"]
    print("ready", flush=True)
    w = kwatch.Watch()
    while True:
        for event in w.stream(
            lister, *list_args, label_selector=args.label, resource_version=rv, timeout_seconds=300
        ):
            obj = event["object"]
            rv = obj["metadata"]["resourceVersion"]
            ctl = controllers.get(obj["metadata"].get("namespace", ""))
            if ctl is not None and event["type"] != "DELETED":
                ctl.handle(obj)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
