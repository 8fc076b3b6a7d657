"""`edgeagent tpm ...`: provision the TPM identity, show it, take a verified quote."""

from __future__ import annotations

import secrets
import string
from typing import Annotated, Any

import typer
from cryptography import x509

from edgeagent.cli import render
from edgeagent.cli.context import state
from edgeagent.config import AgentConfig
from edgeagent.tpm import Tpm, identity, verify_quote
from edgeagent.tpm.identity import Identity, LoadedEk

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def parse_pcr_list(text: str) -> list[int]:
    """"0,1,16" or "0-7,16" -> sorted unique indices; typer.BadParameter on anything else."""
    out: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, sep, hi = part.partition("-")
            out.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a PCR list like 0,1,16 or 0-7,16") from None
    if not out:
        raise typer.BadParameter("no PCRs given")
    return sorted(out)


def _cert_summary(der: bytes | None) -> dict[str, Any] | None:
    if der is None:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return {"error": "the NV index does not hold a parsable X.509 certificate"}
    return {
        "subject": cert.subject.rfc4514_string() or "(empty)",
        "issuer": cert.issuer.rfc4514_string() or "(empty)",
        "serial": f"{cert.serial_number:x}",
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _ek_dict(ek: LoadedEk, ek_type: str) -> dict[str, Any]:
    return {"type": ek_type, "name": ek.name.hex(), "key": identity.describe_public(ek.public),
            "certificate": _cert_summary(ek.cert)}


def _identity_dict(ident: Identity, cfg: AgentConfig) -> dict[str, Any]:
    ek = LoadedEk(handle=ident.ek_handle, public=ident.ek_public, name=ident.ek_name, cert=ident.ek_cert)
    ak = {"type": ident.ak_type, "name": ident.ak_name.hex(),
          "key": identity.describe_public(ident.ak_public), "files": str(cfg.state_dir / "tpm")}
    return {"ek": _ek_dict(ek, ident.ek_type), "ak": ak, "algorithms": ident.algorithms}


def _key_text(key: dict[str, Any]) -> str:
    size = f"{key.get('bits')} bits" if "bits" in key else key.get("curve", "")
    return " ".join(str(p) for p in (key["type"], size, key.get("scheme", "")) if p)


def _identity_rows(info: dict[str, Any]) -> list[tuple[str, Any]]:
    ek, ak = info["ek"], info["ak"]
    cert = ek["certificate"]
    rows: list[tuple[str, Any]] = [("EK name", ek["name"]), ("EK key", _key_text(ek["key"]))]
    if cert is None:
        rows.append(("EK certificate", "none in NV"))
    elif "error" in cert:
        rows.append(("EK certificate", cert["error"]))
    else:
        rows += [("EK cert subject", cert["subject"]), ("EK cert issuer", cert["issuer"]),
                 ("EK cert expires", cert["not_after"])]
    if ak is None:
        rows.append(("AK", "not provisioned (run `edgeagent tpm provision`)"))
    else:
        rows += [("AK name", ak["name"]), ("AK key", _key_text(ak["key"])), ("AK files", ak["files"])]
    if info.get("algorithms"):
        rows.append(("algorithms", ", ".join(f"{k}={v}" for k, v in info["algorithms"].items())))
    if "pcr_banks" in info:
        rows.append(("PCR banks", ", ".join(info["pcr_banks"])))
    return rows


def provision_cmd(ctx: typer.Context, json_: JsonOption = False) -> None:
    """Create (first time) or reload the EK and the persisted AK; the AK name stays the same."""
    cfg = state(ctx).config
    existed = identity.is_provisioned(cfg.state_dir)
    with Tpm.open(cfg.tpm_tcti) as tpm:
        ident = identity.provision(tpm, cfg.state_dir, ek_type=cfg.tpm.ek_type, ak_type=cfg.tpm.ak_type)
        info = _identity_dict(ident, cfg)
    info["ak"]["created"] = not existed
    if json_:
        render.print_json(info)
        return
    verb = "reloaded" if existed else "created and persisted"
    render.console.print(render.kv_table(f"TPM identity (AK {verb})", _identity_rows(info)))


def info_cmd(ctx: typer.Context, json_: JsonOption = False) -> None:
    """Show EK/AK names and algorithms, the EK certificate's subject/issuer and the active PCR banks."""
    cfg = state(ctx).config
    with Tpm.open(cfg.tpm_tcti) as tpm:
        if identity.is_provisioned(cfg.state_dir):
            ident = identity.provision(tpm, cfg.state_dir, ek_type=cfg.tpm.ek_type, ak_type=cfg.tpm.ak_type)
            info = _identity_dict(ident, cfg)
        else:  # info never creates an AK
            info = {"ek": _ek_dict(identity.load_ek(tpm, cfg.tpm.ek_type), cfg.tpm.ek_type), "ak": None,
                    "algorithms": None}
        info["pcr_banks"] = tpm.pcr_banks()
        info["tcti"] = cfg.tpm_tcti
    if json_:
        render.print_json(info)
        return
    render.console.print(render.kv_table(f"TPM at {cfg.tpm_tcti}", _identity_rows(info)))


def quote_cmd(
    ctx: typer.Context,
    nonce: Annotated[
        str | None, typer.Option("--nonce", help="Qualifying data, UTF-8 [default: 20 random characters]")
    ] = None,
    pcrs: Annotated[str, typer.Option("--pcrs", help="PCRs, e.g. 0-7,16,23")] = "0-7",
    bank: Annotated[str, typer.Option("--bank", help="PCR bank")] = "sha256",
    json_: JsonOption = False,
) -> None:
    """Take a quote with the AK and verify it (signature, magic, type, nonce, PCR digest) before printing."""
    indices = parse_pcr_list(pcrs)
    cfg = state(ctx).config
    text = nonce if nonce is not None else "".join(secrets.choice(string.ascii_letters + string.digits)
                                                   for _ in range(20))
    data = text.encode("utf-8")
    with Tpm.open(cfg.tpm_tcti) as tpm:
        ident = identity.provision(tpm, cfg.state_dir, ek_type=cfg.tpm.ek_type, ak_type=cfg.tpm.ak_type)
        quote = tpm.quote(ident, data, indices, bank)
    verify_quote(quote, ident.ak_public, data)  # raises QuoteVerificationError: nothing unverified is printed
    out: dict[str, Any] = {
        "nonce": text,
        "bank": bank,
        "pcrs": {str(i): v.hex() for i, v in sorted(quote.pcr_values.items())},
        "ak_name": ident.ak_name.hex(),
        "sign_alg": ident.algorithms["sign"],
        "verified": True,
        "keylime_quote": quote.keylime_string(),
    }
    if json_:
        render.print_json(out)
        return
    render.console.print(render.table(f"Quote over {bank} PCRs (nonce {text!r}, verified)", ["PCR", "value"],
                                      [(i, v) for i, v in out["pcrs"].items()]))
    render.console.print(render.kv_table(None, [("AK name", out["ak_name"]), ("signature", out["sign_alg"]),
                                                ("keylime quote", _shorten(out["keylime_quote"]))]))


def _shorten(text: str, keep: int = 48) -> str:
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text)} chars; full string with --json)"


def register(app: typer.Typer) -> None:
    tpm = typer.Typer(help="The TPM identity (EK, AK) and quotes.", no_args_is_help=True)
    tpm.command("provision")(provision_cmd)
    tpm.command("info")(info_cmd)
    tpm.command("quote")(quote_cmd)
    app.add_typer(tpm, name="tpm")
