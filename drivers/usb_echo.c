/*
 * usb_echo - driver for the USB echo device (the WASI-USB paper's latency benchmark): whatever goes out on an
 * OUT endpoint comes back on the IN endpoint of the same type; control ping: vendor request 0x01 stores a
 * buffer, vendor request 0x02 returns it.
 *
 * Exports:
 *   init()               find the granted echo device, open it, select configuration 1, claim interface 0
 *   ping(kind, len)      kind 0 bulk, 1 interrupt, 2 control: send `len` bytes (1-4096), read them back,
 *                        compare; returns len, a negative EA_USB_ERR_*, or ECHO_ERR_MISMATCH
 *   recover()            clear the halt of every data endpoint (after EA_USB_ERR_PIPE)
 *   set_timeout(ms)      per-transfer timeout (default 1000 ms)
 *   device_count()       how many granted devices enumeration shows
 *   try_open(vid, pid)   open and close a device by VID:PID; 0 or the error (for policy checks)
 *   hotplug()            next hot-plug event of a granted device: 0, or (kind << 8) | address
 */
#include <string.h>

#include "edgeagent_usb.h"

#define ECHO_VID 0x1209
#define ECHO_PID 0x0001
#define EP_BULK_OUT 0x01
#define EP_BULK_IN 0x81
#define EP_INT_OUT 0x02
#define EP_INT_IN 0x82
#define REQ_PING_SET 0x01
#define REQ_PING_GET 0x02
#define ECHO_MAX 4096
#define ECHO_ERR_MISMATCH (-1000)

enum { PING_BULK = 0, PING_INTERRUPT = 1, PING_CONTROL = 2 };

static ea_usb_handle_t handle;
static uint32_t timeout_ms = 1000;
static uint32_t seq;
static uint8_t tx[ECHO_MAX];
static uint8_t rx[ECHO_MAX];
static ea_usb_device_info_t infos[8];

EA_EXPORT("ea_abi_version") int32_t ea_abi_version(void) { return EA_USB_ABI_VERSION; }
EA_EXPORT("ea_usb_driver") int32_t ea_usb_driver(void) { return 1; }

EA_EXPORT("init") int32_t init(void) {
    ea_usb_device_t dev = ea_usb_find(ECHO_VID, ECHO_PID);
    if (dev < 0) return dev;
    if (handle > 0) ea_usb_close(handle);
    handle = ea_usb_open(dev);
    if (handle < 0) {
        int32_t err = handle;
        handle = 0;
        return err;
    }
    int32_t cfg = ea_usb_active_configuration(handle);
    if (cfg < 0) return cfg;
    if (cfg != 1) {
        int32_t r = ea_usb_select_configuration(handle, 1);
        if (r < 0) return r;
    }
    int32_t r = ea_usb_claim_interface(handle, 0);
    return r < 0 ? r : EA_USB_OK;
}

EA_EXPORT("ping") int32_t ping(uint32_t kind, uint32_t len) {
    if (handle <= 0) return EA_USB_ERR_NO_DEVICE;
    if (len == 0 || len > ECHO_MAX) return EA_USB_ERR_INVALID_PARAM;
    seq++;
    for (uint32_t i = 0; i < len; i++) tx[i] = (uint8_t)(seq + i * 31u);
    int32_t r;
    switch (kind) {
    case PING_BULK:
        r = ea_usb_bulk_out(handle, EP_BULK_OUT, tx, len, timeout_ms);
        if (r < 0) return r;
        r = ea_usb_bulk_in(handle, EP_BULK_IN, rx, len, timeout_ms);
        break;
    case PING_INTERRUPT:
        r = ea_usb_interrupt_out(handle, EP_INT_OUT, tx, len, timeout_ms);
        if (r < 0) return r;
        r = ea_usb_interrupt_in(handle, EP_INT_IN, rx, len, timeout_ms);
        break;
    case PING_CONTROL:
        r = ea_usb_control_out(handle, EA_USB_TYPE_VENDOR, REQ_PING_SET, 0, 0, tx, len, timeout_ms);
        if (r < 0) return r;
        r = ea_usb_control_in(handle, EA_USB_TYPE_VENDOR | EA_USB_ENDPOINT_IN, REQ_PING_GET, 0, 0, rx, len,
                              timeout_ms);
        break;
    default:
        return EA_USB_ERR_INVALID_PARAM;
    }
    if (r < 0) return r;
    if ((uint32_t)r != len || memcmp(tx, rx, len) != 0) return ECHO_ERR_MISMATCH;
    return (int32_t)len;
}

EA_EXPORT("recover") int32_t recover(void) {
    static const uint8_t eps[] = {EP_BULK_OUT, EP_BULK_IN, EP_INT_OUT, EP_INT_IN};
    for (unsigned i = 0; i < sizeof eps; i++) {
        int32_t r = ea_usb_clear_halt(handle, eps[i]);
        if (r < 0) return r;
    }
    return EA_USB_OK;
}

EA_EXPORT("set_timeout") void set_timeout(uint32_t ms) { timeout_ms = ms; }

EA_EXPORT("device_count") int32_t device_count(void) {
    return ea_usb_enumerate(infos, sizeof infos / sizeof infos[0]);
}

EA_EXPORT("try_open") int32_t try_open(uint32_t vid, uint32_t pid) {
    ea_usb_device_t dev = ea_usb_find(vid, pid);
    if (dev < 0) return dev;
    ea_usb_handle_t h = ea_usb_open(dev);
    if (h < 0) return h;
    ea_usb_close(h);
    return EA_USB_OK;
}

EA_EXPORT("hotplug") int32_t hotplug(void) {
    ea_usb_device_info_t info;
    int32_t kind = ea_usb_hotplug_update(&info);
    if (kind <= 0) return kind;
    return (kind << 8) | info.address;
}
