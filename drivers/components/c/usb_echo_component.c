/* The USB echo driver as a component written directly against component:usb@0.2.1 (WebAssembly/wasi-usb HEAD)
 * with wit-bindgen's C bindings: the counterpart of drivers/usb_echo.c (same device, same three pings), no
 * edgeagent C ABI involved. Exports edgeagent:components/usb-echo (drivers/components/wit/world.wit).
 *
 * The device (drivers/../edgeagent/hw/sim/usb_echo.py): VID:PID 1209:0001, interface 0; bulk OUT 0x01 -> IN
 * 0x81, interrupt OUT 0x02 -> IN 0x82; vendor requests 0x01 (store) and 0x02 (fetch) on endpoint 0. */
#include <stdlib.h>
#include <string.h>

#include "usb_echo_driver.h"

#define ECHO_VID 0x1209
#define ECHO_PID 0x0001
#define ECHO_INTERFACE 0
#define TIMEOUT_MS 1000
#define MAX_PING 512
#define ERR(e) (COMPONENT_USB_ERRORS_LIBUSB_ERROR_##e)

typedef component_usb_errors_libusb_error_t usb_error_t;

static component_usb_device_own_device_handle_t handle;
static bool opened;
static uint8_t tx[MAX_PING];

static void say(edgeagent_driver_log_level_t level, const char *text) {
    usb_echo_driver_string_t s = {(uint8_t *)text, strlen(text)};
    edgeagent_driver_log_log(level, &s);
}

bool exports_edgeagent_components_usb_echo_init(usb_error_t *err) {
    component_usb_device_list_tuple3_own_usb_device_device_descriptor_device_location_t devices;
    if (!component_usb_device_list_devices(&devices, err)) return false;
    bool found = false;
    for (size_t i = 0; i < devices.len; i++) {
        component_usb_device_tuple3_own_usb_device_device_descriptor_device_location_t *d = &devices.ptr[i];
        if (!found && d->f1.vendor_id == ECHO_VID && d->f1.product_id == ECHO_PID) {
            found = component_usb_device_method_usb_device_open(component_usb_device_borrow_usb_device(d->f0),
                                                                &handle, err);
            if (!found) {
                component_usb_device_list_tuple3_own_usb_device_device_descriptor_device_location_free(&devices);
                return false;
            }
        }
    }
    component_usb_device_list_tuple3_own_usb_device_device_descriptor_device_location_free(&devices);
    if (!found) {
        say(EDGEAGENT_DRIVER_LOG_LEVEL_ERROR, "usb echo: no 1209:0001 among the granted devices");
        *err = ERR(NOT_FOUND);
        return false;
    }
    opened = true;
    component_usb_device_borrow_device_handle_t h = component_usb_device_borrow_device_handle(handle);
    uint8_t config = 0;
    if (!component_usb_device_method_device_handle_get_configuration(h, &config, err)) return false;
    if (config != 1) {
        component_usb_device_config_value_t one = {.tag = COMPONENT_USB_CONFIGURATION_CONFIG_VALUE_VALUE,
                                                   .val.value = 1};
        if (!component_usb_device_method_device_handle_set_configuration(h, &one, err)) return false;
    }
    bool active = false;
    if (component_usb_device_method_device_handle_kernel_driver_active(h, ECHO_INTERFACE, &active, err) && active)
        component_usb_device_method_device_handle_detach_kernel_driver(h, ECHO_INTERFACE, err);
    return component_usb_device_method_device_handle_claim_interface(h, ECHO_INTERFACE, err);
}

/* One transfer: new-transfer, submit (with the OUT data), await; IN data is copied into `in` (at most `n`). */
static bool transfer(component_usb_transfers_transfer_type_t type, uint8_t endpoint,
                     component_usb_transfers_transfer_setup_t setup, const uint8_t *out, uint8_t *in, uint32_t n,
                     usb_error_t *err) {
    component_usb_transfers_transfer_options_t opts = {
        .endpoint = endpoint, .timeout_ms = TIMEOUT_MS, .stream_id = 0, .iso_packets = 0};
    component_usb_device_own_transfer_t xfer;
    if (!component_usb_device_method_device_handle_new_transfer(component_usb_device_borrow_device_handle(handle),
                                                                type, &setup, n, &opts, &xfer, err))
        return false;
    usb_echo_driver_list_u8_t data = {(uint8_t *)out, out ? n : 0};
    if (!component_usb_transfers_method_transfer_submit_transfer(component_usb_transfers_borrow_transfer(xfer),
                                                                 &data, err)) {
        component_usb_transfers_transfer_drop_own(xfer);
        return false;
    }
    usb_echo_driver_list_u8_t got;
    if (!component_usb_transfers_await_transfer(xfer, &got, err)) return false; /* consumes xfer */
    bool ok = true;
    if (in) {
        ok = got.len == n;
        memcpy(in, got.ptr, got.len < n ? got.len : n);
    }
    usb_echo_driver_list_u8_free(&got);
    if (!ok) *err = ERR(IO);
    return ok;
}

bool exports_edgeagent_components_usb_echo_ping(uint8_t kind, uint32_t len, uint32_t *ret, usb_error_t *err) {
    static uint8_t rx[MAX_PING];
    if (!opened || len == 0 || len > MAX_PING || kind > 2) {
        *err = ERR(INVALID_PARAM);
        return false;
    }
    for (uint32_t i = 0; i < len; i++) tx[i] = (uint8_t)(i * 7 + kind);
    component_usb_transfers_transfer_setup_t none = {0};
    bool ok;
    if (kind == 2) {
        component_usb_transfers_transfer_setup_t store = {.bm_request_type = 0x40, .b_request = 0x01};
        component_usb_transfers_transfer_setup_t fetch = {.bm_request_type = 0xC0, .b_request = 0x02};
        ok = transfer(COMPONENT_USB_TRANSFERS_TRANSFER_TYPE_CONTROL, 0, store, tx, NULL, len, err) &&
             transfer(COMPONENT_USB_TRANSFERS_TRANSFER_TYPE_CONTROL, 0x80, fetch, NULL, rx, len, err);
    } else {
        component_usb_transfers_transfer_type_t type =
            kind == 1 ? COMPONENT_USB_TRANSFERS_TRANSFER_TYPE_INTERRUPT : COMPONENT_USB_TRANSFERS_TRANSFER_TYPE_BULK;
        uint8_t ep = kind == 1 ? 0x02 : 0x01;
        ok = transfer(type, ep, none, tx, NULL, len, err) && transfer(type, ep | 0x80, none, NULL, rx, len, err);
    }
    if (!ok) return false;
    if (memcmp(tx, rx, len) != 0) {
        *err = ERR(OTHER);
        return false;
    }
    *ret = len;
    return true;
}
