"""Which digest a controller module had when ``edgeagent measure`` extended it into the TPM.

The host's digest check is pluggable (``host.DigestLookup``: path -> expected sha256 or None); this is the
lookup for a measured device: the newest ``file`` record of the agent's event log (its last segment for the
measurement PCR) naming that path. A module measured at boot and replaced since then is refused, so what runs
is what the attestation vouched for. Paths the log does not name (or no log at all) are not judged here.

A module that does not come from a file (a ConfigMap's binaryData) is looked up by a relative path,
``controllers/<key>``: the name ``edgeagent measure`` gives the file of the same name in the controllers
directory, so a ConfigMap can only deliver, under a measured name, the module that was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgeagent.config import AgentConfig
from edgeagent.measure import cel, measurer

if TYPE_CHECKING:  # the host (threads, watches, the kube client) is loaded only where controllers run
    from edgeagent.controllers.host import DigestLookup


def measured_digests(config: AgentConfig) -> DigestLookup | None:
    """The lookup over the event log, or None when nothing was measured (EventLogError if it is corrupt)."""
    records = cel.read_log(measurer.log_path(config))
    recorded: dict[Path, str] = {}
    named: dict[str, str] = {}
    for rec in cel.segment(records, config.measure.pcr):
        if rec.kind == cel.FILE and rec.digests:
            path, digest = rec.content.get("path"), rec.content.get("sha256")
            if isinstance(path, str) and isinstance(digest, str):
                recorded[Path(path).resolve()] = digest
                name = rec.content.get("name")
                if isinstance(name, str):
                    named[name] = digest
    if not recorded:
        return None

    def lookup(path: Path) -> str | None:
        if not path.is_absolute():
            return named.get(path.as_posix())
        return recorded.get(path.resolve())

    return lookup
