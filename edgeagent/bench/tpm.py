"""`edgeagent bench tpm`: PCR extend/read, quotes with an RSA and an ECC AK, and quote verification.

Runs against the configured TPM (``--tpm``). The AKs are created in throwaway state directories, so the
agent's own persisted AK is never touched. Extends go to PCR 16, which the agent resets and re-binds before
every quote anyway (Keylime's NK binding), never to the measurement PCR; PCR 16 is reset afterwards.
Then the measurement cases (edgeagent.bench.measure_cases): TCG2 and CEL log replay, a cold `measure`, which
resets the measurement PCR: run this benchmark against a software TPM, not a device in service.
Targets (issue 2, on swtpm): quote <= 10 ms median, verification <= 1 ms, replay of 1,000 events <= 20 ms.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
import time
from pathlib import Path

from edgeagent.bench import measure_cases
from edgeagent.bench.harness import Case, Report, timeit
from edgeagent.config import AgentConfig
from edgeagent.tpm import Tpm, identity, verify_quote

BENCH_PCR = 16
QUOTED_PCRS = list(range(10))
NONCE = b"edgeagentbench000000"  # 20 characters, like a Keylime nonce
QUOTE_TARGET = 10e-3
VERIFY_TARGET = 1e-3


def run(config: AgentConfig, *, repeat: int) -> Report:
    meta = {"tcti": config.tpm_tcti, "quoted_pcrs": QUOTED_PCRS, "extend_pcr": BENCH_PCR}
    report = Report("tpm", meta=meta)
    with Tpm.open(config.tpm_tcti) as tpm, tempfile.TemporaryDirectory(prefix="edgeagent-bench-") as tmp:
        banks = tpm.pcr_banks()
        report.meta["pcr_banks"] = banks
        digests = {bank: hashlib.new(bank, b"edgeagent bench").digest() for bank in banks}
        try:
            report.add(
                Case(
                    f"pcr extend (PCR {BENCH_PCR}, {'+'.join(banks)})",
                    timeit(lambda: tpm.pcr_extend(BENCH_PCR, digests), repeat=repeat),
                )
            )
        finally:
            tpm.pcr_reset(BENCH_PCR)
        report.add(
            Case(
                f"pcr read ({len(QUOTED_PCRS)} PCRs)",
                timeit(lambda: tpm.pcr_read(QUOTED_PCRS), repeat=repeat),
            )
        )
        idents = {}
        for ak_type in ("rsa", "ecc"):
            t0 = time.perf_counter()
            idents[ak_type] = identity.provision(tpm, Path(tmp) / ak_type, ak_type=ak_type)
            report.meta[f"ak_create_{ak_type}_s"] = time.perf_counter() - t0
        quote_case = "quote {} AK ({} PCRs)".format
        for ak_type, ident in idents.items():
            report.add(
                Case(
                    quote_case(ak_type, len(QUOTED_PCRS)),
                    timeit(functools.partial(tpm.quote, ident, NONCE, QUOTED_PCRS), repeat=repeat),
                    target=QUOTE_TARGET,
                    baseline=None if ak_type == "rsa" else quote_case("rsa", len(QUOTED_PCRS)),
                    note="includes the PCR read that accompanies the quote",
                )
            )
        for ak_type, ident in idents.items():
            quote = tpm.quote(ident, NONCE, QUOTED_PCRS)
            report.add(
                Case(
                    f"verify {ak_type} quote",
                    timeit(
                        functools.partial(verify_quote, quote, ident.ak_public, NONCE),
                        repeat=repeat,
                        inner=10,
                    ),
                    target=VERIFY_TARGET,
                    note="pure Python + cryptography: parse, signature, nonce, PCR digest",
                )
            )
        measure_cases.add_cases(report, config, tpm, repeat=repeat)
    return report
