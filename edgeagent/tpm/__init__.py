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

Modules: `connection` (Tpm, error mapping), `pcr`, `identity`, `quote` (taking quotes), `attest` (TPM
structure parsing and quote verification, pure Python + cryptography), `credential`, `swtpm` (SoftwareTpm,
a simulator with a local-CA EK certificate, for tests and the embedded default).
"""

from __future__ import annotations

from edgeagent.tpm.connection import Tpm
from edgeagent.tpm.identity import Identity, provision
from edgeagent.tpm.quote import Quote, verify_quote

__all__ = ["Identity", "Quote", "Tpm", "provision", "verify_quote"]
