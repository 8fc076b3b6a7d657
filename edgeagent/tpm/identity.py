"""The TPM identity a verifier knows the agent by: the EK (and its certificate) and an attestation key (AK).

The EK is re-derived on every start from the TCG EK Credential Profile's default template (RSA-2048 "L-1" or
ECC NIST P-256 "L-2"); the TPM's endorsement seed makes it the same key every time. Its certificate, when
the manufacturer (or swtpm_setup's local CA) stored one, is read from NV (0x1c00002 RSA, 0x1c0000a ECC).

The AK is a restricted signing key (RSASSA-SHA256 by default, ECDSA P-256 optional) created under the EK,
like tpm2_createak and Keylime's own agent do. It is created once; its TPM2B_PRIVATE (wrapped by the EK, so
useless off this TPM) and TPM2B_PUBLIC are persisted under ``state_dir/tpm/`` and loaded again under the
re-derived EK. The AK name (nameAlg || H(TPMT_PUBLIC)) therefore never changes, which the Keylime registrar
insists on: it refuses a re-registration of the same agent with a different AK.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_SE,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_OBJECT,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TSS2_Exception,
)
from tpm2_pytss.utils import NVReadEK, create_ek_template

from edgeagent.errors import ConfigError, StateError
from edgeagent.tpm import credential
from edgeagent.tpm.attest import object_name
from edgeagent.tpm.connection import Tpm

# ek_type -> the EK Credential Profile template name tpm2-pytss knows (low range, with the standard policy).
EK_TEMPLATES = {"rsa": "EK-RSA2048", "ecc": "EK-ECC256"}
# ak_type -> (TPMT_PUBLIC parameters, Keylime's tpm_sign_alg).
AK_TEMPLATES = {"rsa": ("rsa2048:rsassa-sha256:null", "rsassa"), "ecc": ("ecc256:ecdsa-sha256:null", "ecdsa")}
AK_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH
)
AK_PUBLIC_FILE = "ak.pub"
AK_PRIVATE_FILE = "ak.priv"


@dataclasses.dataclass(frozen=True)
class LoadedEk:
    handle: ESYS_TR
    public: bytes  # TPM2B_PUBLIC
    name: bytes
    cert: bytes | None  # DER


@dataclasses.dataclass(frozen=True)
class Identity:
    """The agent's EK and AK as loaded in one `Tpm` connection.

    ``algorithms`` uses Keylime's vocabulary: {"hash": "sha256", "enc": "rsa"|"ecc" (the EK's),
    "sign": "rsassa"|"ecdsa" (the AK's)}, i.e. tpm_hash_alg / tpm_enc_alg / tpm_sign_alg.
    """

    ek_type: str
    ak_type: str
    ek_public: bytes  # TPM2B_PUBLIC, as the registrar's ek_tpm
    ek_cert: bytes | None  # DER, as the registrar's ekcert
    ek_name: bytes
    ak_public: bytes  # TPM2B_PUBLIC, as the registrar's aik_tpm
    ak_name: bytes  # TPM2B_NAME contents: nameAlg (u16) || H(TPMT_PUBLIC)
    ek_handle: ESYS_TR = dataclasses.field(repr=False, compare=False)
    ak_handle: ESYS_TR = dataclasses.field(repr=False, compare=False)
    algorithms: dict[str, str] = dataclasses.field(default_factory=dict)


def der_length(data: bytes) -> int:
    """Length of the DER SEQUENCE at the start of ``data`` (NV indices are often padded past the cert)."""
    if len(data) < 2 or data[0] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    first = data[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    if n == 0 or n > 4 or len(data) < 2 + n:
        raise ValueError("bad DER length")
    return 2 + n + int.from_bytes(data[2 : 2 + n], "big")


def _check_types(ek_type: str, ak_type: str) -> None:
    if ek_type not in EK_TEMPLATES:
        raise ConfigError(f"tpm.ek_type must be one of {', '.join(EK_TEMPLATES)}, got {ek_type!r}")
    if ak_type not in AK_TEMPLATES:
        raise ConfigError(f"tpm.ak_type must be one of {', '.join(AK_TEMPLATES)}, got {ak_type!r}")


# ---------------------------------------------------------------- EK
def ek_policy_session(ectx: ESAPI) -> ESYS_TR:
    """A policy session meeting the EK's authPolicy, PolicySecret(TPM_RH_ENDORSEMENT); caller flushes it."""
    sess = ectx.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
    )
    try:
        ectx.policy_secret(ESYS_TR.ENDORSEMENT, sess)
    except BaseException:
        ectx.flush_context(sess)
        raise
    return sess


def load_ek(tpm: Tpm, ek_type: str = "rsa") -> LoadedEk:
    """The EK of ``ek_type``, created from its template once per connection, with its NV certificate."""
    _check_types(ek_type, "rsa")
    template_name = EK_TEMPLATES[ek_type]
    with tpm.locked(f"{ek_type.upper()} EK creation") as ectx:
        cached = tpm.loaded_eks.get(template_name)
        if cached is not None:
            return cached
        nv_cert, template = create_ek_template(template_name, NVReadEK(ectx))
        handle, public, _, _, _ = ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        cert: bytes | None = None
        if nv_cert:
            try:
                cert = bytes(nv_cert[: der_length(bytes(nv_cert))])
            except ValueError:
                cert = None  # an NV index that does not hold a DER certificate is no certificate
        pub = bytes(public.marshal())
        ek = LoadedEk(handle=handle, public=pub, name=object_name(pub), cert=cert)
        tpm.loaded_eks[template_name] = ek
        return ek


# ---------------------------------------------------------------- AK persistence
def _write_secret(path: Path, data: bytes) -> None:
    """0600, atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_persisted(tpm_dir: Path) -> tuple[TPM2B_PUBLIC, TPM2B_PRIVATE] | None:
    """The persisted AK, or None when none was committed (ak.pub is written last, so it marks the commit)."""
    pub_path, priv_path = tpm_dir / AK_PUBLIC_FILE, tpm_dir / AK_PRIVATE_FILE
    if not pub_path.exists():
        return None
    try:
        pub_raw, priv_raw = pub_path.read_bytes(), priv_path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{priv_path} is missing but {pub_path} exists; remove both to re-provision") \
            from None
    except OSError as e:
        raise StateError(f"cannot read the persisted AK in {tpm_dir}: {e.strerror}") from None
    try:
        pub, n_pub = TPM2B_PUBLIC.unmarshal(pub_raw)
        priv, n_priv = TPM2B_PRIVATE.unmarshal(priv_raw)
    except Exception:
        raise StateError(f"the persisted AK in {tpm_dir} is corrupt (ak.pub/ak.priv do not parse)") from None
    if n_pub != len(pub_raw) or n_priv != len(priv_raw) or pub.size == 0 or priv.size == 0:
        raise StateError(f"the persisted AK in {tpm_dir} is corrupt (wrong length)")
    return pub, priv


def _persist(tpm_dir: Path, pub: TPM2B_PUBLIC, priv: TPM2B_PRIVATE) -> None:
    tpm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_secret(tpm_dir / AK_PRIVATE_FILE, bytes(priv.marshal()))
    _write_secret(tpm_dir / AK_PUBLIC_FILE, bytes(pub.marshal()))
    _fsync_dir(tpm_dir)


def _ak_type_of(pub: TPM2B_PUBLIC) -> str:
    alg = pub.publicArea.type
    if alg == TPM2_ALG.RSA:
        return "rsa"
    if alg == TPM2_ALG.ECC:
        return "ecc"
    return str(alg)


# ---------------------------------------------------------------- AK
def _create_ak(ectx: ESAPI, ek: LoadedEk, ak_type: str) -> tuple[TPM2B_PUBLIC, TPM2B_PRIVATE]:
    params, _ = AK_TEMPLATES[ak_type]
    template = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(params, objectAttributes=AK_ATTRIBUTES,
                                                         nameAlg="sha256"))
    sess = ek_policy_session(ectx)
    try:
        priv, pub, _, _, _ = ectx.create(ek.handle, TPM2B_SENSITIVE_CREATE(), template, session1=sess)
    finally:
        ectx.flush_context(sess)
    return pub, priv


def _load_ak(tpm: Tpm, ectx: ESAPI, ek: LoadedEk, pub: TPM2B_PUBLIC, priv: TPM2B_PRIVATE,
             tpm_dir: Path) -> tuple[ESYS_TR, bytes]:
    pub_bytes = bytes(pub.marshal())
    name = object_name(pub_bytes)
    key = (ek.name, name)  # the same AK blob is a different (or no) object under another EK
    cached = tpm.loaded_aks.get(key)
    if cached is not None:
        return cached, name
    sess = ek_policy_session(ectx)
    try:
        handle = ectx.load(ek.handle, priv, pub, session1=sess)
    except TSS2_Exception as e:
        if (e.rc & 0xFF0000) == 10 << 16:
            raise
        raise StateError(
            f"the AK persisted in {tpm_dir} does not load under this TPM's EK ({e}); "
            "a different TPM or ek_type? remove ak.pub/ak.priv to re-provision"
        ) from None
    finally:
        ectx.flush_context(sess)
    tpm.loaded_aks[key] = handle
    return handle, name


def is_provisioned(state_dir: Path) -> bool:
    """Whether an AK has been committed under ``state_dir`` (its public part is written last)."""
    return (Path(state_dir) / "tpm" / AK_PUBLIC_FILE).exists()


def provision(tpm: Tpm, state_dir: Path, *, ek_type: str = "rsa", ak_type: str = "rsa") -> Identity:
    """Loads the agent's identity, creating and persisting the AK the first time.

    Raises ConfigError for an unknown key type, StateError when the persisted AK is corrupt, of another type
    than ``ak_type`` or does not belong to this TPM, TpmError/TpmUnavailable for TPM failures.
    """
    _check_types(ek_type, ak_type)
    tpm_dir = Path(state_dir) / "tpm"
    with tpm.lock:
        ek = load_ek(tpm, ek_type)
        with tpm.locked("AK provisioning") as ectx:
            persisted = _read_persisted(tpm_dir)
            if persisted is None:
                pub, priv = _create_ak(ectx, ek, ak_type)
                try:
                    _persist(tpm_dir, pub, priv)
                except OSError as e:
                    raise StateError(f"cannot persist the AK in {tpm_dir}: {e.strerror}") from None
            else:
                pub, priv = persisted
                found = _ak_type_of(pub)
                if found != ak_type:
                    raise StateError(
                        f"the AK persisted in {tpm_dir} is {found}, not {ak_type}; "
                        "remove ak.pub/ak.priv to re-provision"
                    )
            handle, name = _load_ak(tpm, ectx, ek, pub, priv, tpm_dir)
    ek_enc = "rsa" if ek_type == "rsa" else "ecc"
    return Identity(
        ek_type=ek_type, ak_type=ak_type, ek_public=ek.public, ek_cert=ek.cert, ek_name=ek.name,
        ak_public=bytes(pub.marshal()), ak_name=name, ek_handle=ek.handle, ak_handle=handle,
        algorithms={"hash": "sha256", "enc": ek_enc, "sign": AK_TEMPLATES[ak_type][1]},
    )


def describe_public(public: bytes) -> dict[str, Any]:
    """Key type, size or curve and signing scheme of a TPM2B_PUBLIC, for display."""
    from edgeagent.tpm import attest

    p = attest.parse_public(public)
    if p.type == attest.TPM_ALG_RSA:
        out: dict[str, Any] = {"type": "rsa", "bits": p.key.key_size}
    else:
        out = {"type": "ecc", "curve": p.key.curve.name}  # type: ignore[union-attr]
    schemes = {attest.TPM_ALG_RSASSA: "rsassa", attest.TPM_ALG_RSAPSS: "rsapss",
               attest.TPM_ALG_ECDSA: "ecdsa"}
    if p.scheme in schemes:
        out["scheme"] = f"{schemes[p.scheme]}-{attest.HASH_BY_ID.get(p.scheme_hash, hex(p.scheme_hash))}"
    return out


def activate_credential(tpm: Tpm, identity: Identity, blob: bytes) -> bytes:
    """The secret inside ``blob``; CredentialError if the TPM refuses it (made for another EK or AK)."""
    credential_blob, secret = credential.parse_tools_credential(blob)
    with tpm.locked("credential activation") as ectx:
        sess = ek_policy_session(ectx)
        try:
            out = ectx.activate_credential(
                identity.ak_handle, identity.ek_handle,
                TPM2B_ID_OBJECT(credential=credential_blob), TPM2B_ENCRYPTED_SECRET(secret=secret),
                session1=ESYS_TR.PASSWORD, session2=sess,
            )
        except TSS2_Exception as e:
            if (e.rc & 0xFF0000) == 10 << 16:
                raise
            raise credential.CredentialError(
                f"the TPM refused the credential (not made for this EK and AK, or corrupt): {e}"
            ) from None
        finally:
            ectx.flush_context(sess)
    return bytes(out)


__all__ = [
    "Identity", "LoadedEk", "activate_credential", "describe_public", "ek_policy_session", "is_provisioned",
    "load_ek", "provision",
]
