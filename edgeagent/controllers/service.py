"""``edgeagent controllers run`` as a service: load, start, run until SIGTERM/SIGINT, stop.

It runs in a process of its own (``python -m edgeagent.controllers``, which the CLI command execs into): the
host is long-lived, and the CLI's other command groups (TPM, enrollment, drivers, the official kubernetes
client) would otherwise stay imported in it for nothing, ~25 MB of a host whose controllers cost ~20 KiB each.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from edgeagent.config import AgentConfig
from edgeagent.errors import ControllerError, EdgeAgentError


def parse_configmap_ref(text: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise ControllerError(f"--configmap must be NAMESPACE/NAME, got {text!r}")
    return ns, name


def apply_options(cfg: AgentConfig, **options: Any) -> None:
    """Command-line options (None: not given) over the config's [controllers] section, where defaults live."""
    for name, value in options.items():
        if value is not None:
            setattr(cfg.controllers, name, value)
    if cfg.controllers.configmap:
        parse_configmap_ref(cfg.controllers.configmap)


def check(cfg: AgentConfig, directory: Path | None) -> Path | None:
    """The directory to load (or None), after the checks that need no API server; raises project errors.

    ``directory`` None: the config's controllers.dir, unless a ConfigMap is configured.
    """
    from edgeagent.controllers.manifest import manifest_paths

    cc = cfg.controllers
    if not cc.configmap or directory is not None:
        directory = directory or cc.dir
        if not manifest_paths(directory):  # ManifestError for a missing directory
            raise ControllerError(f"no controller manifests (*.toml, *.controller.json) in {directory}")
    if cc.kubeconfig is not None and not cc.kubeconfig.is_file():
        from edgeagent.errors import ConfigError

        raise ConfigError(f"kubeconfig {cc.kubeconfig} does not exist")
    return directory


def run(
    cfg: AgentConfig,
    directory: Path | None = None,
    *,
    stop: threading.Event | None = None,
    api: Any = None,
    sync_timeout: float = 30.0,
) -> None:
    """Runs the host until SIGTERM/SIGINT. Raises project errors for what stops it from starting.

    Controllers keep their state across runs: a graceful stop swaps every one out to its snapshot and the next
    start resumes it (same module only), then calls each one's ``handle-synced`` once its watches have
    listed. ``stop`` given (tests): no signal handlers, the caller sets it; ``api``: a KubeApi to use instead
    of connecting.
    """
    from edgeagent.controllers.host import ControllerHost, HostOptions
    from edgeagent.controllers.measured import measured_digests
    from edgeagent.controllers.source import ConfigMapSource
    from edgeagent.kube.api import KubeApi, connect

    cc = cfg.controllers
    directory = check(cfg, directory)
    if api is None:
        api = KubeApi(connect(cc.kubeconfig))
    host = ControllerHost(
        api,
        HostOptions(
            state_dir=cfg.state_dir,
            swap=cc.swap,
            workers=cc.workers,
            max_active=cc.max_active,
            digest_for=measured_digests(cfg) if cc.verify else None,
            resume_saved=True,
            advertise=True,
        ),
    )
    source = ConfigMapSource(host, api, *parse_configmap_ref(cc.configmap)) if cc.configmap else None
    try:
        errors = host.load_directory(directory) if directory is not None else []
        if source is not None:
            errors += source.load()  # ClusterError when the ConfigMap cannot be read
    except BaseException:
        host.stop()
        raise
    if not host.controllers and source is None:
        host.stop()
        first = host.load_errors[0] if host.load_errors else None
        # The first error's own class, so its exit code (a manifest error is a configuration error: 78).
        cls = type(first) if isinstance(first, EdgeAgentError) else ControllerError
        raise cls(f"no controller could be loaded from {directory}: {errors[0]}")
    stopping = stop if stop is not None else threading.Event()
    if stop is None:

        def _on_signal(signum: int, _frame: Any) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    try:
        host.start(sync_timeout=sync_timeout, cancel=stopping)
        if source is not None:
            source.start()
        print(
            f"running {len(host.controllers)} controller(s) against {api.host}"
            + (f" (reloading {source.origin})" if source is not None else "")
            + (f"; {len(errors)} failed to load (see `edgeagent controllers list`)" if errors else "")
            + f"; status in {cfg.state_dir / 'controllers'}",
            file=sys.stderr,
            flush=True,
        )
        while not stopping.wait(1.0):
            pass
    finally:
        if source is not None:
            source.stop()
        host.stop(save=True)
