"""The EdgeNode custom resource: one per device, pinning its TPM endorsement key.

An EdgeNode (edgeagent.io/v1alpha1, cluster-scoped, named after the Kubernetes node) is the cluster's
statement "this TPM may become node NAME". The spec is written by an administrator; the status only by the
attestation controller, through the status subresource, so a device or a user with spec access cannot mark
itself attested. Printer columns put what an operator asks first (is it attested, when was it last seen
good, when does its credential die) into `kubectl get edgenodes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s

from edgeagent.errors import ClusterError, ConfigError
from edgeagent.kube import errors as kube_errors

GROUP = "edgeagent.io"
VERSION = "v1alpha1"
KIND = "EdgeNode"
PLURAL = "edgenodes"
NAME = f"{PLURAL}.{GROUP}"

PHASES = ("Pending", "Attested", "Enrolled", "Unattested")
"""Pending: pinned, not yet proven. Attested: the verifier accepts its quotes, join material delivered.
Enrolled: attested and holding a node credential. Unattested: attestation failed; access withdrawn."""

_HEX64 = "^[0-9a-f]{64}$"


def _condition_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    }


def definition() -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1), as deploy/crd.yaml also holds it."""
    spec_schema = {
        "type": "object",
        "required": ["agentUUID"],
        "properties": {
            "agentUUID": {
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "description": "The device's Keylime agent uuid.",
            },
            "ekCertSHA256": {
                "type": "string",
                "pattern": _HEX64,
                "description": "Hex sha256 of the EK certificate (DER).",
            },
            "ekPublicSHA256": {
                "type": "string",
                "pattern": _HEX64,
                "description": "Hex sha256 of the EK TPM2B_PUBLIC, for TPMs without a cert.",
            },
            "agentAddress": {"type": "string", "description": "ip:port of the agent's mTLS API (pull mode)."},
            "mode": {
                "type": "string",
                "enum": ["pull", "push"],
                "description": "pull: the verifier polls the agent's API; push: Keylime's push model "
                "(API 3.0), the device opens every connection (NAT) and fetches join material sealed to "
                "its TPM.",
            },
            "tpmPolicy": {
                "type": "object",
                "description": 'Expected PCR values ({"23": [hex, ...]}); absent: trust on first use.',
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "credentialLifetimeSeconds": {"type": "integer", "minimum": 600, "maximum": 86400},
            "bootPCRs": {
                "type": "object",
                "description": "Measured boot: accepted values of PCRs 0-7 ({\"0\": [hex, ...]}), checked by "
                "the verifier in every quote.",
                "additionalProperties": {"type": "array", "items": {"type": "string", "pattern": _HEX64}},
            },
            "mbRefstate": {
                "type": "object",
                "description": "Measured boot: a Keylime mb policy (reference state) for the verifier; it "
                "replays the device's firmware event log against PCRs 0-9 and 11-15.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
    }
    status_schema = {
        "type": "object",
        "properties": {
            "phase": {"type": "string", "enum": list(PHASES)},
            "attested": {"type": "boolean"},
            "lastAttestation": {"type": "string", "format": "date-time"},
            "credentialExpiry": {"type": "string", "format": "date-time"},
            "message": {"type": "string"},
            "verifierState": {"type": "integer"},
            "delivered": {
                "type": "boolean",
                "description": "Added to the verifier with V; U and the join material sent.",
            },
            "bootstrapTokenID": {"type": "string"},
            "bindingNonce": {"type": "string"},
            "revocationPublicKey": {"type": "string"},
            "trustedPolicy": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "bindingTime": {
                "type": "integer",
                "description": "Unix time of the newest key binding accepted (replay floor).",
            },
            "conditions": {"type": "array", "items": _condition_schema()},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "plural": PLURAL,
                "singular": "edgenode",
                "kind": KIND,
                "listKind": f"{KIND}List",
                "shortNames": ["en"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Attested", "type": "boolean", "jsonPath": ".status.attested"},
                        {"name": "Last Attestation", "type": "date", "jsonPath": ".status.lastAttestation"},
                        {"name": "Credential Expiry", "type": "date", "jsonPath": ".status.credentialExpiry"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def install(api: k8s.ApiClient, *, timeout: float = 30.0) -> None:
    """Creates (or updates) the CRD and waits until the API server serves it (condition Established)."""
    ext = k8s.ApiextensionsV1Api(api)
    body = definition()
    what = f"install CRD {NAME}"
    if kube_errors.call(what, ext.create_custom_resource_definition, body, ok=(409,)) is None:
        with kube_errors.translated(what):  # it exists: bring it up to date
            current = ext.read_custom_resource_definition(NAME)
            meta = current.metadata
            body["metadata"]["resourceVersion"] = meta.resource_version if meta is not None else None
            # a dict body is sent as it is (the client's models are only one way to write one)
            ext.replace_custom_resource_definition(NAME, body)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with kube_errors.translated(what):
            crd = ext.read_custom_resource_definition(NAME)
        conditions = (crd.status.conditions or []) if crd.status else []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.1)
    raise ClusterError(f"CRD {NAME} not established after {timeout:.0f} s")


# ---------------------------------------------------------------- typed view of one object
@dataclass(frozen=True)
class EdgeNodeSpec:
    agent_uuid: str
    ek_cert_sha256: str | None = None
    ek_public_sha256: str | None = None
    agent_address: str | None = None
    tpm_policy: dict[str, list[str]] | None = None
    credential_lifetime_seconds: int | None = None
    boot_pcrs: dict[str, list[str]] | None = None
    """Accepted PCR 0-7 values: added to the verifier's tpm_policy (static measured-boot reference)."""
    mb_refstate: dict[str, Any] | None = None
    """A Keylime measured-boot policy, passed to the verifier as mb_policy."""
    mode: str = "pull"
    """pull (the verifier connects to the agent) or push (Keylime's push model: the device connects)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"agentUUID": self.agent_uuid}
        for key, value in (
            ("ekCertSHA256", self.ek_cert_sha256),
            ("ekPublicSHA256", self.ek_public_sha256),
            # push mode has none: omitted rather than "" (1.20's API server reads "" as null and refuses it)
            ("agentAddress", self.agent_address or None),
            ("tpmPolicy", self.tpm_policy),
            ("credentialLifetimeSeconds", self.credential_lifetime_seconds),
            ("bootPCRs", self.boot_pcrs),
            ("mbRefstate", self.mb_refstate),
            ("mode", None if self.mode == "pull" else self.mode),
        ):
            if value is not None:
                out[key] = value
        return out


@dataclass
class EdgeNode:
    """An EdgeNode as read from the API server (name, spec, status, resourceVersion)."""

    name: str
    spec: EdgeNodeSpec
    status: dict[str, Any] = field(default_factory=dict)
    resource_version: str | None = None
    uid: str | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EdgeNode:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        uuid = spec.get("agentUUID")
        if not isinstance(uuid, str) or not uuid:
            raise ConfigError(f"EdgeNode {meta.get('name')!r} has no spec.agentUUID")
        return cls(
            name=meta["name"],
            spec=EdgeNodeSpec(
                agent_uuid=uuid,
                ek_cert_sha256=spec.get("ekCertSHA256"),
                ek_public_sha256=spec.get("ekPublicSHA256"),
                agent_address=spec.get("agentAddress"),
                tpm_policy=spec.get("tpmPolicy"),
                credential_lifetime_seconds=spec.get("credentialLifetimeSeconds"),
                boot_pcrs=spec.get("bootPCRs"),
                mb_refstate=spec.get("mbRefstate"),
                mode=str(spec.get("mode") or "pull"),
            ),
            status=dict(obj.get("status") or {}),
            resource_version=meta.get("resourceVersion"),
            uid=meta.get("uid"),
        )

    @property
    def phase(self) -> str:
        return self.status.get("phase") or "Pending"

    def reference(self) -> k8s.V1ObjectReference:
        """The object reference Events about this EdgeNode point at."""
        return k8s.V1ObjectReference(
            api_version=f"{GROUP}/{VERSION}", kind=KIND, name=self.name, uid=self.uid
        )


class EdgeNodes:
    """CRUD on EdgeNodes through the official client's CustomObjectsApi; failures as ``kube.errors``."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.custom = k8s.CustomObjectsApi(api)

    def create(self, name: str, spec: EdgeNodeSpec) -> EdgeNode:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name},
            "spec": spec.to_json(),
        }
        return EdgeNode.from_json(
            self._call("create", name, self.custom.create_cluster_custom_object, GROUP, VERSION, PLURAL, body)
        )

    def get(self, name: str) -> EdgeNode | None:
        get = self.custom.get_cluster_custom_object
        obj = self._call("read", name, get, GROUP, VERSION, PLURAL, name, ok=(404,))
        return None if obj is None else EdgeNode.from_json(obj)

    def list(self) -> tuple[list[EdgeNode], str]:
        """Every EdgeNode and the list's resourceVersion (to start a watch from)."""
        obj = self._call("list", "*", self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        nodes = []
        for item in obj.get("items", []):
            try:
                nodes.append(EdgeNode.from_json(item))
            except ConfigError:
                continue  # an invalid object is reported when it is reconciled on its own
        return nodes, obj.get("metadata", {}).get("resourceVersion", "")

    def patch_status(self, name: str, status: dict[str, Any]) -> EdgeNode:
        """Merge-patches the status subresource (only keys given change)."""
        obj = self._call(
            "update status of",
            name,
            self.custom.patch_cluster_custom_object_status,
            GROUP,
            VERSION,
            PLURAL,
            name,
            {"status": status},
        )
        return EdgeNode.from_json(obj)

    def delete(self, name: str) -> None:
        delete = self.custom.delete_cluster_custom_object
        self._call("delete", name, delete, GROUP, VERSION, PLURAL, name, ok=(404,))

    @staticmethod
    def _call(what: str, name: str, fn: Any, *args: Any, ok: tuple[int, ...] = ()) -> Any:
        """``fn(*args)``; failures as kube.errors name the EdgeNode; None for an answer in ``ok``."""
        return kube_errors.call(f"{what} EdgeNode {name}", fn, *args, ok=ok)


def condition(type_: str, ok: bool, reason: str, message: str = "") -> dict[str, str]:
    """A status condition (metav1.Condition's shape) stamped now."""
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": now_rfc3339(),
    }


def merge_conditions(current: list[dict[str, Any]] | None, *new: dict[str, str]) -> list[dict[str, Any]]:
    """Replaces conditions of the same type; keeps lastTransitionTime when the status did not change."""
    out = {c["type"]: dict(c) for c in current or [] if "type" in c}
    for c in new:
        old = out.get(c["type"])
        if old is not None and old.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": old.get("lastTransitionTime", c["lastTransitionTime"])}
        out[c["type"]] = c
    return list(out.values())


def now_rfc3339(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))
