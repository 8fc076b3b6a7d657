"""`edgeagent enroll`: TPM identity -> measure -> Keylime registration -> attested -> node credential."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from edgeagent.cli import render
from edgeagent.cli.context import state
from edgeagent.config import AgentConfig
from edgeagent.errors import AttestationError, ConfigError

if TYPE_CHECKING:  # the enrollment pulls in the Kubernetes client: imported when the command runs
    from edgeagent.attest import enroll

_STATUS_STYLE = {"start": "yellow", "waiting": "cyan", "retry": "magenta", "done": "green", "skipped": "dim",
                 "revoked": "red"}


class _Progress:
    """A live table, one row per step: status, duration, detail."""

    def __init__(self) -> None:
        from edgeagent.attest import enroll

        self.rows: dict[str, tuple[str, str, str]] = {s: ("pending", "", "") for s in enroll.STEPS}
        self.live: Live | None = None

    def table(self) -> Table:
        t = Table(title="edgeagent enroll", title_justify="left")
        for c in ("step", "status", "seconds", "detail"):
            t.add_column(c)
        for step, (status, seconds, detail) in self.rows.items():
            style = _STATUS_STYLE.get(status, "")
            shown = f"[{style}]{status}[/]" if style else status
            t.add_row(step, shown, seconds, escape(detail))
        return t

    def __call__(self, event: enroll.StepEvent) -> None:
        previous = self.rows.get(event.step, ("", "", ""))[1]
        seconds = f"{event.seconds:.3f}" if event.seconds is not None else previous
        self.rows[event.step] = (event.status, seconds, event.detail)
        if self.live is not None:
            self.live.update(self.table())


def _apply_options(cfg: AgentConfig, **options: Any) -> None:
    for name, value in options.items():
        if value is not None:
            setattr(cfg.enroll, name, value)
    if cfg.enroll.mode not in ("pull", "push"):
        raise ConfigError(f"--mode must be pull or push, got {cfg.enroll.mode!r}")
    if cfg.enroll.mode == "push" and (cfg.tpm.ak_type != "rsa" or cfg.tpm.ek_type != "rsa"):
        raise ConfigError("--mode push needs tpm.ak_type = rsa and tpm.ek_type = rsa (Keylime 7.14.3 checks "
                          "the proof of possession as RSASSA; the join material is sealed to an RSA EK)")
    if not 0 < cfg.enroll.agent_port < 65536:
        raise ConfigError(f"enroll.agent_port {cfg.enroll.agent_port} is not a TCP port (1-65535)")


def _result_dict(res: enroll.EnrollResult) -> dict[str, Any]:
    return {
        "uuid": res.uuid,
        "node_name": res.node_name,
        "ak_name": res.ak_name,
        "agent_address": res.agent_address,
        "kubeconfig": str(res.kubeconfig) if res.kubeconfig else None,
        "steps": [{"step": e.step, "status": e.status, "seconds": e.seconds, "detail": e.detail}
                  for e in res.steps],
        "figures": {k: round(v, 4) for k, v in res.figures.items()},
    }


def enroll_command(
    ctx: typer.Context,
    mode: Annotated[str | None, typer.Option(
        "--mode", help="pull: the verifier connects to the agent API; push: Keylime's push model for "
        "devices behind NAT, no listening socket (default: enroll.mode)")] = None,
    verifier: Annotated[str | None, typer.Option(
        "--verifier", help="push: Keylime verifier URL, https://HOST:PORT (default: enroll.verifier_url)",
    )] = None,
    join_url: Annotated[str | None, typer.Option(
        "--join-url", help="push: the attestation controller's join endpoint (default: enroll.join_url)",
    )] = None,
    registrar: Annotated[str | None, typer.Option(
        "--registrar", help="Keylime registrar URL, http://HOST:PORT (default: enroll.registrar_url)",
    )] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address the agent API listens on and "
                                             "registers (default: enroll.agent_host)")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", help="Agent API port (default: enroll.agent_port)")] = None,
    node_name: Annotated[str | None, typer.Option("--node-name", help="Kubernetes node name "
                                                  "(default: enroll.node_name or the host name)")] = None,
    uuid: Annotated[str | None, typer.Option(
        "--uuid", help="Keylime agent uuid (default: from the EK)")] = None,
    keylime_ca: Annotated[Path | None, typer.Option(
        "--keylime-ca", help="Keylime CA certificate, cv_ca/cacert.crt (default: enroll.keylime_ca)",
    )] = None,
    kubeconfig: Annotated[Path | None, typer.Option("--kubeconfig", help="Where to write the kubelet "
                                                    "kubeconfig (default: enroll.kubeconfig)")] = None,
    payload_dir: Annotated[Path | None, typer.Option("--payload-dir", help="Where the decrypted payload "
                                                     "lands (a tmpfs) (default: enroll.payload_dir)")] = None,
    once: Annotated[bool, typer.Option("--once", help="Stop once the credential is written instead of "
                                       "serving attestation")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a progress view")] = False,
) -> None:
    """Enroll this device: provision, measure, register with Keylime, get attested, obtain the node
    credential, write the kubelet kubeconfig, then keep serving attestation. Safe to re-run: it resumes."""
    cfg = state(ctx).config
    _apply_options(cfg, mode=mode, verifier_url=verifier, join_url=join_url, registrar_url=registrar,
                   agent_host=host, agent_port=port, node_name=node_name,
                   uuid=uuid, keylime_ca=keylime_ca, kubeconfig=kubeconfig, payload_dir=payload_dir)
    from edgeagent.attest import enroll

    progress = None if json_ else _Progress()
    run = enroll.Enrollment(cfg, on_event=progress)

    def _stop(signum: int, frame: FrameType | None) -> None:
        run.stop()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop)
    try:
        if progress is None:
            res = run.enroll_steps()
        else:
            with Live(progress.table(), console=render.console, refresh_per_second=8) as live:
                progress.live = live
                res = run.enroll_steps()
        if once and res.kubeconfig is None and run.revoked.is_set():
            raise AttestationError("revoked during enrollment: the certificate was discarded")
        if json_:
            render.print_json(_result_dict(res))
        else:
            figures = ", ".join(f"{k} {v:.3f} s" for k, v in res.figures.items())
            render.console.print(f"enrolled {escape(res.node_name)} (agent {res.uuid}); {figures}")
            if res.kubeconfig:
                render.console.print(f"kubelet kubeconfig: {escape(str(res.kubeconfig))}")
        if not once:
            if not json_:
                where = (f"pushing attestation to {cfg.enroll.verifier_url}" if cfg.enroll.mode == "push"
                         else f"serving attestation on {res.agent_address}")
                render.console.print(f"{where} (SIGTERM to stop)")
            run.serve()
    finally:
        run.close()


def register(app: typer.Typer) -> None:
    app.command("enroll")(enroll_command)
