"""The agent's TPM: one owned connection, PCRs, EK/AK identity, quotes and credential activation.

Everything goes through tpm2-pytss (ESAPI); nothing shells out to tpm2-tools.

    with Tpm.open("swtpm:host=127.0.0.1,port=2321") as tpm:      # TpmUnavailable if there is none
        tpm.pcr_banks()                                           # ["sha256"]
        tpm.pcr_extend(23, {"sha256": digest})                    # a digest for every active bank
        ident = identity.provision(tpm, state_dir)                # EK + persisted AK (same AK name forever)
        q = tpm.quote(ident, nonce, [0, 16, 23])                  # Quote(attest, signature, pcr_values, bank)
        verify_quote(q, ident.ak_public, nonce)                   # QuoteVerificationError if anything is off
        q.keylime_string()                                        # "r<attest>:<sig>:<pcrblob>"
        tpm.activate_credential(ident, blob)                      # tpm2-tools 0xBADCC0DE credential -> secret

Modules that need tpm2-pytss (libtss2): `connection` (Tpm, error mapping), `identity` (EK/AK, credential
activation), `esys` (PCR reads, taking quotes). Pure Python + cryptography, for the cluster side too: `pcr`
(banks, selections), `quote` (Quote, Keylime's format, verification), `attest` (TPM structure parsing),
`credential` (the registrar's credential format). `swtpm`: SoftwareTpm, a simulator with a local-CA EK
certificate, for tests and the embedded default.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeagent.tpm.connection import Tpm
    from edgeagent.tpm.identity import Identity, provision
    from edgeagent.tpm.quote import Quote, verify_quote

__all__ = ["Identity", "Quote", "Tpm", "provision", "verify_quote"]

# Loaded when first used (PEP 562), not when the package is: importing the pure modules (`attest`, `quote`,
# `pcr`, `credential`) must not load tpm2-pytss, so the cluster side verifies quotes without libtss2.
_LAZY = {"Tpm": "connection", "Identity": "identity", "provision": "identity", "Quote": "quote",
         "verify_quote": "quote"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
