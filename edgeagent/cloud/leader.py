"""Leader election on a coordination.k8s.io/v1 Lease, so two controller replicas never act at once.

The same protocol as client-go's leaderelection: the holder renews `renewTime` every `retry_period`; a
candidate takes the Lease only when it has not been renewed for `lease_duration`; every write carries the
resourceVersion read, so two candidates racing for an expired Lease cannot both win (one gets 409). A leader
that cannot renew for `renew_deadline` (< lease_duration) stops acting *before* anyone else may take over:
`is_leader()` turns False on the leader's own clock, not when another replica notices.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable

from kubernetes import client as k8s

from edgeagent.errors import ConfigError, EdgeAgentError
from edgeagent.kube import errors as kube_errors

log = logging.getLogger(__name__)


class LeaseElector:
    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started: Callable[[], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ConfigError("leader election needs retry_period < renew_deadline < lease_duration")
        self.coord = k8s.CoordinationV1Api(api)
        self.name, self.namespace, self.identity = name, namespace, identity
        self.lease_duration, self.renew_deadline, self.retry_period = (
            lease_duration,
            renew_deadline,
            retry_period,
        )
        self.on_started, self.on_stopped = on_started, on_stopped
        self._renewed_at: float | None = None  # monotonic time of our last successful acquire/renew
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # What we saw of another holder: (holder, renewTime string, our monotonic time when it last changed)
        self._observed: tuple[str | None, str | None, float] = (None, None, 0.0)

    def is_leader(self) -> bool:
        with self._lock:
            return self._renewed_at is not None and time.monotonic() - self._renewed_at < self.renew_deadline

    def start(self) -> LeaseElector:
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.identity}", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.retry_period + 5)
        was_leader = self.is_leader()
        with self._lock:
            self._renewed_at = None
        if release and was_leader:
            self._release()
        if was_leader and self.on_stopped:
            self.on_stopped()

    def _run(self) -> None:
        leading = False
        while not self._stop.is_set():
            try:
                self.try_acquire_or_renew()
            except Exception as e:  # the API server being down must not kill the elector
                log.warning("lease %s/%s: %s", self.namespace, self.name, e)
            now_leader = self.is_leader()
            if now_leader != leading:
                callback = self.on_started if now_leader else self.on_stopped
                try:
                    if callback is not None:
                        callback()
                except Exception as e:  # a callback's failure must not end the election loop
                    log.warning("lease %s/%s callback: %s", self.namespace, self.name, e)
            leading = now_leader
            self._stop.wait(self.retry_period)

    def try_acquire_or_renew(self) -> bool:
        t_req = time.monotonic()
        now = datetime.datetime.now(datetime.UTC)
        what = f"Lease {self.namespace}/{self.name}"
        timeout = self.renew_deadline
        read = self.coord.read_namespaced_lease
        lease = kube_errors.call(
            f"read {what}", read, self.name, self.namespace, ok=(404,), _request_timeout=timeout
        )
        if lease is None:
            body = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, acquire=now, transitions=0),
            )
            create = self.coord.create_namespaced_lease
            # 409: another candidate created it first
            created = kube_errors.call(
                f"create {what}", create, self.namespace, body, ok=(409,), _request_timeout=timeout
            )
            if created is None:
                return False
            self._renewed(t_req)
            return True
        spec = lease.spec or k8s.V1LeaseSpec()
        holder = spec.holder_identity
        renew = spec.renew_time.isoformat() if spec.renew_time else None
        if holder != self.identity and holder:
            seen_holder, seen_renew, seen_at = self._observed
            if (seen_holder, seen_renew) != (holder, renew):
                self._observed = (holder, renew, t_req)
                return False
            duration = spec.lease_duration_seconds or self.lease_duration
            if t_req - seen_at < duration:
                return False  # the holder's lease is still valid by our own clock
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquire = spec.acquire_time if holder == self.identity and spec.acquire_time else now
        lease.spec = self._spec(now, acquire=acquire, transitions=transitions)
        replace = self.coord.replace_namespaced_lease
        args = (self.name, self.namespace, lease)
        if kube_errors.call(f"renew {what}", replace, *args, ok=(409,), _request_timeout=timeout) is None:
            return False  # someone else wrote first; read again next round
        self._renewed(t_req)
        return True

    def _spec(
        self, now: datetime.datetime, *, acquire: datetime.datetime, transitions: int
    ) -> k8s.V1LeaseSpec:
        return k8s.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self.lease_duration),
            acquire_time=acquire,
            renew_time=now,
            lease_transitions=transitions,
        )

    def _renewed(self, t_req: float) -> None:
        with self._lock:
            self._renewed_at = t_req  # measured from before the request: conservative

    def _release(self) -> None:
        try:
            with kube_errors.translated(f"release Lease {self.namespace}/{self.name}"):
                lease = self.coord.read_namespaced_lease(
                    self.name, self.namespace, _request_timeout=self.renew_deadline
                )
                if lease.spec and lease.spec.holder_identity == self.identity:
                    lease.spec.holder_identity = None
                    lease.spec.lease_duration_seconds = 1
                    self.coord.replace_namespaced_lease(
                        self.name, self.namespace, lease, _request_timeout=self.renew_deadline
                    )
        except EdgeAgentError as e:  # it expires on its own; releasing only lets a successor start sooner
            log.info("%s", e)
