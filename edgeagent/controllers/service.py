"""``edgeagent controllers run`` as a service: load, start, run until SIGTERM/SIGINT, stop.

It runs in a process of its own (``python -m edgeagent.controllers``, which the CLI command execs into): the
host is long-lived, and the CLI's other command groups (TPM, enrollment, drivers, the official kubernetes
client) would otherwise stay imported in it for nothing, ~25 MB of a host whose controllers cost ~20 KiB each.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from edgeagent.config import AgentConfig
from edgeagent.errors import ControllerError


@dataclasses.dataclass(frozen=True)
class RunOptions:
    directory: Path | None = None  # None: the config's controllers.dir, unless a ConfigMap is given
    kubeconfig: Path | None = None
    configmap: tuple[str, str] | None = None  # (namespace, name)
    swap: bool = True
    verify: bool = True
    workers: int = 2
    max_active: int = 16


def parse_configmap_ref(text: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise ControllerError(f"--configmap must be NAMESPACE/NAME, got {text!r}")
    return ns, name


def check(cfg: AgentConfig, opts: RunOptions) -> Path | None:
    """The directory to load (or None), after the checks that need no API server; raises project errors."""
    from edgeagent.controllers.manifest import manifest_paths

    directory = opts.directory
    if opts.configmap is None or directory is not None:
        directory = directory or cfg.controllers.dir
        if not manifest_paths(directory):  # ManifestError for a missing directory
            raise ControllerError(f"no controller manifests (*.toml, *.controller.json) in {directory}")
    if opts.kubeconfig is not None and not opts.kubeconfig.is_file():
        from edgeagent.errors import ConfigError

        raise ConfigError(f"kubeconfig {opts.kubeconfig} does not exist")
    return directory


def run(cfg: AgentConfig, opts: RunOptions) -> None:
    """Runs the host until SIGTERM/SIGINT. Raises project errors for what stops it from starting."""
    from edgeagent.controllers.host import ControllerHost, HostOptions
    from edgeagent.controllers.measured import measured_digests
    from edgeagent.controllers.source import ConfigMapSource
    from edgeagent.kube.api import KubeApi, connect

    directory = check(cfg, opts)
    api = KubeApi(connect(opts.kubeconfig))
    host = ControllerHost(
        api,
        HostOptions(
            state_dir=cfg.state_dir,
            swap=opts.swap,
            workers=opts.workers,
            max_active=opts.max_active,
            digest_for=measured_digests(cfg) if opts.verify else None,
        ),
    )
    source = ConfigMapSource(host, api, *opts.configmap) if opts.configmap is not None else None
    try:
        errors = host.load_directory(directory) if directory is not None else []
        if source is not None:
            errors += source.load()  # ClusterError when the ConfigMap cannot be read
    except BaseException:
        host.stop()
        raise
    if not host.controllers and source is None:
        host.stop()
        raise ControllerError(f"no controller could be loaded from {directory}: {errors[0]}")
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        host.start()
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
        while not stop.wait(1.0):
            pass
    finally:
        if source is not None:
            source.stop()
        host.stop()
