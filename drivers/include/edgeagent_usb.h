/*
 * edgeagent_usb.h - the ABI between an edgeagent USB driver (a wasm32-wasi core module) and its host.
 *
 * The interfaces are the WIT in drivers/wit/usb.wit (shaped like WebAssembly/wasi-usb's component:usb),
 * lowered to core Wasm by hand: resources are opaque non-zero handles, lists are (pointer, length) pairs in the
 * guest's memory (the guest always allocates), and every call returns an int32: a count or value >= 0, or a
 * negative EA_USB_ERR_* code (libusb's numbers, so libusb habits carry over).
 *
 * Build: the project's drivers/Makefile (clang-14 --target=wasm32-wasi -O2 -mexec-model=reactor
 *   -mmutable-globals -Wl,--export=__stack_pointer -Wl,-z,stack-size=65536 -Iinclude).
 *
 * Capabilities: the agent opens the bus; a driver sees only the devices its policy grants (policies/drivers/
 * <driver>.toml: [[usb]] vid, pid, optional interface). ea_usb_enumerate() and hot-plug events list nothing
 * else; ea_usb_find() of another VID:PID, opening a device handle the host never gave out, and claiming an
 * interface outside the grant all fail with EA_USB_ERR_ACCESS.
 *
 * Typical driver (see drivers/usb_echo.c):
 *     ea_usb_device_t dev = ea_usb_find(0x1209, 0x0001);     // or walk ea_usb_enumerate()
 *     ea_usb_handle_t h = ea_usb_open(dev);                   // < 0: error
 *     if (ea_usb_kernel_driver_active(h, 0) == 1) ea_usb_detach_kernel_driver(h, 0);
 *     ea_usb_claim_interface(h, 0);
 *     ea_usb_bulk_out(h, 0x01, buf, n, 1000);                 // bytes sent or error
 *     ea_usb_bulk_in(h, 0x81, buf, n, 1000);                  // bytes received or error
 *     // a STALL returns EA_USB_ERR_PIPE: ea_usb_clear_halt(h, 0x81) and go on
 *
 * Limits: the same as every guest (memory limit, compute and call deadlines; see edgeagent_i2c.h). Waiting for
 * a transfer happens in the host and does not count as compute. A transfer moves at most EA_USB_MAX_TRANSFER
 * bytes.
 */
#ifndef EDGEAGENT_USB_H
#define EDGEAGENT_USB_H

#include <stddef.h>
#include <stdint.h>

#ifndef EA_IMPORT
#define EA_IMPORT(mod, name) __attribute__((import_module(mod), import_name(name)))
#endif
#ifndef EA_EXPORT
#define EA_EXPORT(name) __attribute__((export_name(name)))
#endif
#define EA_USB_ABI_VERSION 1

/* WIT resources: usb-device (a device the policy grants, before opening) and device-handle (opened). */
typedef int32_t ea_usb_device_t;
typedef int32_t ea_usb_handle_t;

/* WIT enum libusb-error, numbered as libusb numbers LIBUSB_ERROR_*. */
enum {
    EA_USB_OK = 0,
    EA_USB_ERR_IO = -1,             /* input/output error */
    EA_USB_ERR_INVALID_PARAM = -2,  /* bad argument (e.g. a bulk call on an interrupt endpoint) */
    EA_USB_ERR_ACCESS = -3,         /* the policy does not grant this device or interface */
    EA_USB_ERR_NO_DEVICE = -4,      /* the device was unplugged */
    EA_USB_ERR_NOT_FOUND = -5,      /* no such device, interface, or kernel driver */
    EA_USB_ERR_BUSY = -6,           /* claimed by someone else, or bound to a kernel driver */
    EA_USB_ERR_TIMEOUT = -7,        /* the transfer did not complete in time */
    EA_USB_ERR_OVERFLOW = -8,       /* the device sent more than asked for */
    EA_USB_ERR_PIPE = -9,           /* STALL: endpoint halted or request not supported */
    EA_USB_ERR_INTERRUPTED = -10,
    EA_USB_ERR_NO_MEM = -11,
    EA_USB_ERR_NOT_SUPPORTED = -12, /* e.g. isochronous transfers on a backend without them */
    EA_USB_ERR_OTHER = -99,
};

/* What ea_usb_enumerate() and ea_usb_hotplug_update() write per device: 32 bytes. `descriptor` is the 18-byte
 * standard device descriptor exactly as on the wire (USB 2.0 table 9-8; multi-byte fields little-endian). */
typedef struct {
    ea_usb_device_t device;     /* handle for ea_usb_open() and ea_usb_configuration_descriptor() */
    uint8_t bus;
    uint8_t address;
    uint8_t speed;              /* 1 low, 2 full, 3 high, 4 super (libusb_speed) */
    uint8_t num_configurations;
    uint8_t descriptor[18];
    uint8_t reserved[6];
} ea_usb_device_info_t;

#define EA_USB_MAX_TRANSFER (1u << 20)

/* Hot-plug event kinds (WIT variant device-connection-event). */
enum { EA_USB_HOTPLUG_PENDING = 0, EA_USB_HOTPLUG_CONNECTED = 1, EA_USB_HOTPLUG_DISCONNECTED = 2 };

/* ---- imports: component:usb/device ---- */

/* Writes up to `cap` records for the granted devices present now; returns how many there are (may be > cap). */
EA_IMPORT("component:usb/device", "list-devices")
int32_t ea_usb_enumerate(ea_usb_device_info_t *out, uint32_t cap);

/* The first granted device with this VID:PID; EA_USB_ERR_ACCESS if the policy does not grant it,
 * EA_USB_ERR_NOT_FOUND if none is plugged in. */
EA_IMPORT("component:usb/device", "[static]usb-device.find")
ea_usb_device_t ea_usb_find(uint32_t vid, uint32_t pid);

/* The configuration descriptor with index `index` (0-based), all wTotalLength bytes (interfaces, endpoints,
 * class descriptors); copies up to `cap` bytes and returns the full length. Walk it with ea_usb_next_desc(). */
EA_IMPORT("component:usb/device", "[method]usb-device.get-configuration-descriptor")
int32_t ea_usb_configuration_descriptor(ea_usb_device_t dev, uint32_t index, uint8_t *buf, uint32_t cap);

/* Opens the device: a handle > 0, or an error. Close with ea_usb_close(). */
EA_IMPORT("component:usb/device", "[method]usb-device.open")
ea_usb_handle_t ea_usb_open(ea_usb_device_t dev);

EA_IMPORT("component:usb/device", "[resource-drop]device-handle")
void ea_usb_close(ea_usb_handle_t h);

/* bConfigurationValue of the active configuration (0: unconfigured). */
EA_IMPORT("component:usb/device", "[method]device-handle.get-configuration")
int32_t ea_usb_active_configuration(ea_usb_handle_t h);

EA_IMPORT("component:usb/device", "[method]device-handle.set-configuration")
int32_t ea_usb_select_configuration(ea_usb_handle_t h, uint32_t value);

EA_IMPORT("component:usb/device", "[method]device-handle.claim-interface")
int32_t ea_usb_claim_interface(ea_usb_handle_t h, uint32_t interface);

EA_IMPORT("component:usb/device", "[method]device-handle.release-interface")
int32_t ea_usb_release_interface(ea_usb_handle_t h, uint32_t interface);

EA_IMPORT("component:usb/device", "[method]device-handle.set-interface-altsetting")
int32_t ea_usb_select_alternate_interface(ea_usb_handle_t h, uint32_t interface, uint32_t alternate);

/* Clears an endpoint halt (CLEAR_FEATURE(ENDPOINT_HALT)); the way out of EA_USB_ERR_PIPE. */
EA_IMPORT("component:usb/device", "[method]device-handle.clear-halt")
int32_t ea_usb_clear_halt(ea_usb_handle_t h, uint32_t endpoint);

/* Port reset; the configuration is restored, claimed interfaces stay claimed. */
EA_IMPORT("component:usb/device", "[method]device-handle.reset-device")
int32_t ea_usb_reset(ea_usb_handle_t h);

/* 1 if a kernel driver (e.g. usb-storage) is bound to the interface, 0 if not. */
EA_IMPORT("component:usb/device", "[method]device-handle.kernel-driver-active")
int32_t ea_usb_kernel_driver_active(ea_usb_handle_t h, uint32_t interface);

EA_IMPORT("component:usb/device", "[method]device-handle.detach-kernel-driver")
int32_t ea_usb_detach_kernel_driver(ea_usb_handle_t h, uint32_t interface);

/* String descriptor `index`, as UTF-8 (up to `cap` bytes copied); returns the full length. */
EA_IMPORT("component:usb/device", "[method]device-handle.string")
int32_t ea_usb_string(ea_usb_handle_t h, uint32_t index, char *buf, uint32_t cap);

/* ---- imports: component:usb/transfers (timeouts in milliseconds; 0 waits forever) ---- */

/* Control transfer, device-to-host: at most `len` bytes into `buf`; returns the bytes received. */
EA_IMPORT("component:usb/transfers", "[method]device-handle.control-in")
int32_t ea_usb_control_in(ea_usb_handle_t h, uint32_t request_type, uint32_t request, uint32_t value,
                          uint32_t index, uint8_t *buf, uint32_t len, uint32_t timeout_ms);

/* Control transfer, host-to-device: sends `len` bytes from `buf` (may be 0); returns the bytes sent. */
EA_IMPORT("component:usb/transfers", "[method]device-handle.control-out")
int32_t ea_usb_control_out(ea_usb_handle_t h, uint32_t request_type, uint32_t request, uint32_t value,
                           uint32_t index, const uint8_t *buf, uint32_t len, uint32_t timeout_ms);

EA_IMPORT("component:usb/transfers", "[method]device-handle.bulk-in")
int32_t ea_usb_bulk_in(ea_usb_handle_t h, uint32_t endpoint, uint8_t *buf, uint32_t len, uint32_t timeout_ms);

EA_IMPORT("component:usb/transfers", "[method]device-handle.bulk-out")
int32_t ea_usb_bulk_out(ea_usb_handle_t h, uint32_t endpoint, const uint8_t *buf, uint32_t len,
                        uint32_t timeout_ms);

EA_IMPORT("component:usb/transfers", "[method]device-handle.interrupt-in")
int32_t ea_usb_interrupt_in(ea_usb_handle_t h, uint32_t endpoint, uint8_t *buf, uint32_t len, uint32_t timeout_ms);

EA_IMPORT("component:usb/transfers", "[method]device-handle.interrupt-out")
int32_t ea_usb_interrupt_out(ea_usb_handle_t h, uint32_t endpoint, const uint8_t *buf, uint32_t len,
                             uint32_t timeout_ms);

/* Isochronous transfers: EA_USB_ERR_NOT_SUPPORTED on the current backends (pyusb has no isochronous API). */
EA_IMPORT("component:usb/transfers", "[method]device-handle.isochronous-in")
int32_t ea_usb_isochronous_in(ea_usb_handle_t h, uint32_t endpoint, uint8_t *buf, uint32_t len, uint32_t timeout_ms);

EA_IMPORT("component:usb/transfers", "[method]device-handle.isochronous-out")
int32_t ea_usb_isochronous_out(ea_usb_handle_t h, uint32_t endpoint, const uint8_t *buf, uint32_t len,
                               uint32_t timeout_ms);

/* ---- imports: component:usb/usb-hotplug ---- */

/* The next hot-plug event of a granted device: EA_USB_HOTPLUG_PENDING (nothing new), _CONNECTED or
 * _DISCONNECTED, with the device's record written to `out`. Never blocks. */
EA_IMPORT("component:usb/usb-hotplug", "update")
int32_t ea_usb_hotplug_update(ea_usb_device_info_t *out);

/* ---- helpers (header-only) ---- */

/* USB 2.0 chapter 9 constants. */
#define EA_USB_DT_DEVICE 0x01
#define EA_USB_DT_CONFIG 0x02
#define EA_USB_DT_INTERFACE 0x04
#define EA_USB_DT_ENDPOINT 0x05
#define EA_USB_ENDPOINT_IN 0x80
#define EA_USB_TRANSFER_BULK 0x02
#define EA_USB_TRANSFER_INTERRUPT 0x03
#define EA_USB_TYPE_STANDARD 0x00
#define EA_USB_TYPE_CLASS 0x20
#define EA_USB_TYPE_VENDOR 0x40
#define EA_USB_RECIPIENT_DEVICE 0x00
#define EA_USB_RECIPIENT_INTERFACE 0x01
#define EA_USB_RECIPIENT_ENDPOINT 0x02

static inline uint16_t ea_usb_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* idVendor / idProduct of an enumerated device. */
static inline uint16_t ea_usb_vid(const ea_usb_device_info_t *d) { return ea_usb_le16(d->descriptor + 8); }
static inline uint16_t ea_usb_pid(const ea_usb_device_info_t *d) { return ea_usb_le16(d->descriptor + 10); }

/* Walks a configuration descriptor: the offset of the first descriptor of `type` at or after offset `pos`, or
 * -1. Continue after a hit at `at` with pos = at + cfg[at]. */
static inline int32_t ea_usb_next_desc(const uint8_t *cfg, uint32_t len, uint32_t pos, uint8_t type) {
    while (pos + 2 <= len && cfg[pos] >= 2 && pos + cfg[pos] <= len) {
        if (cfg[pos + 1] == type) return (int32_t)pos;
        pos += cfg[pos];
    }
    return -1;
}

/* A one-line name for an error code (for logs). */
static inline const char *ea_usb_strerror(int32_t err) {
    switch (err) {
    case EA_USB_ERR_IO: return "io";
    case EA_USB_ERR_INVALID_PARAM: return "invalid-param";
    case EA_USB_ERR_ACCESS: return "access";
    case EA_USB_ERR_NO_DEVICE: return "no-device";
    case EA_USB_ERR_NOT_FOUND: return "not-found";
    case EA_USB_ERR_BUSY: return "busy";
    case EA_USB_ERR_TIMEOUT: return "timeout";
    case EA_USB_ERR_OVERFLOW: return "overflow";
    case EA_USB_ERR_PIPE: return "pipe";
    case EA_USB_ERR_INTERRUPTED: return "interrupted";
    case EA_USB_ERR_NO_MEM: return "no-mem";
    case EA_USB_ERR_NOT_SUPPORTED: return "not-supported";
    default: return err >= 0 ? "ok" : "other";
    }
}

/* ---- exports every USB driver defines ----
 *   EA_EXPORT("ea_abi_version") int32_t ea_abi_version(void);   return EA_USB_ABI_VERSION
 *   EA_EXPORT("ea_usb_driver")  int32_t ea_usb_driver(void);    return 1 (marks the module as a USB driver)
 *   EA_EXPORT("init")           int32_t init(void);             find, open and claim the device; 0 or error
 * plus the driver's own operations (drivers/usb_echo.c: ping; drivers/usb_storage.c: read/write blocks).
 */

#endif /* EDGEAGENT_USB_H */
