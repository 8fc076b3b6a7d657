"""Measurements: what the agent extends into the TPM, the logs that describe it, and their replay.

Modules, one concept each:

- ``algs``: TPM_ALG_ID hash algorithms and the PCR extend operation.
- ``tcg2``: the firmware's TCG2 crypto-agile binary event log (parse, encode, replay).
- ``cel``: the agent's own event log, TCG Canonical Event Log in its JSON encoding, appended crash-safely.
- ``targets``: which files the agent measures (its package, config, policies, Wasm modules, extra paths).
- ``measurer``: extends each target into the application PCR and logs it (see its docstring for the PCR
  choice, boot segments and crash recovery).
- ``verify``: replays both logs and compares them with the TPM, naming the first event that diverges.
- ``policy``: the reference policy (digest allowlist per measured component) and its checker.

Everything here raises ``edgeagent.errors`` exceptions with one-line messages; nothing prints.
"""
