"""Event logs for tests, built with the project's encoder and checked against independent arithmetic."""

from __future__ import annotations

from edgeagent.measure import tcg2

BANKS = ("sha1", "sha256")


def boot_events(banks: tuple[str, ...] = BANKS, *, locality: int | None = 3) -> list[tcg2.Event]:
    """A plausible UEFI boot: StartupLocality, CRTM, firmware, Secure Boot variables, separators, a loader."""
    evs: list[tcg2.Event] = []
    if locality is not None:
        evs.append(tcg2.startup_locality_event(locality))
    evs += [
        tcg2.measurement(0, tcg2.EV_S_CRTM_VERSION, "1.0\0".encode("utf-16-le"), banks),
        tcg2.measurement(
            0, tcg2.EV_EFI_PLATFORM_FIRMWARE_BLOB, b"\x00" * 16, banks, measured=b"firmware volume"
        ),
        tcg2.measurement(7, tcg2.EV_EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot\x01", banks),
        tcg2.Event(1, tcg2.EV_NO_ACTION, (), b"SP800-155 Event\0vendor"),
    ]
    evs += [tcg2.measurement(pcr, tcg2.EV_SEPARATOR, b"\0\0\0\0", banks) for pcr in range(8)]
    evs += [
        tcg2.measurement(
            4, tcg2.EV_EFI_BOOT_SERVICES_APPLICATION, b"\x01" * 40, banks, measured=b"shimx64.efi"
        ),
        tcg2.measurement(5, 0x0000_7777, b"vendor specific", banks),  # unknown type: still extended
        tcg2.measurement(9, tcg2.EV_IPL, b"(hd0,gpt2)/vmlinuz\0", banks),
    ]
    return evs


def boot_log(banks: tuple[str, ...] = BANKS, *, locality: int | None = 3) -> tcg2.EventLog:
    return tcg2.build(banks, boot_events(banks, locality=locality))
