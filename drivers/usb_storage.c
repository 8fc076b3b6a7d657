/*
 * usb_storage - a USB mass-storage driver: Bulk-Only Transport (USB MSC BOT 1.0) carrying SCSI block commands
 * (SPC-2/SBC-2 names): TEST UNIT READY, REQUEST SENSE, INQUIRY, READ CAPACITY(10), READ(10), WRITE(10).
 * The WASI-USB paper's throughput benchmark device.
 *
 * Exports:
 *   init()                       find the first granted device with a BOT/SCSI interface (class 08/06/50),
 *                                detach the kernel's driver, claim it, wait until ready, read its capacity
 *   block_count(), block_size()  from READ CAPACITY(10)
 *   ea_data()                    the data buffer (EA_DATA_SIZE bytes) that read/write_blocks use
 *   read_blocks(lba, count)      READ(10) into ea_data(); bytes read or a negative error
 *   write_blocks(lba, count)     WRITE(10) from ea_data(); bytes written or a negative error
 *   inquiry()                    INQUIRY into ea_data(); length
 *   sense()                      (key << 16) | (asc << 8) | ascq of the last failed command
 * Errors: EA_USB_ERR_* from the transport, STORAGE_ERR_CHECK_CONDITION when the device rejected the command
 * (see sense()), STORAGE_ERR_PROTOCOL for a malformed CSW (after a BOT reset recovery).
 */
#include <string.h>

#include "edgeagent_usb.h"

#define EA_DATA_SIZE 65536
#define CBW_SIGNATURE 0x43425355u /* "USBC" */
#define CSW_SIGNATURE 0x53425355u /* "USBS" */
#define CBW_LEN 31
#define CSW_LEN 13
#define REQ_BOMS_RESET 0xFF
#define STORAGE_ERR_CHECK_CONDITION (-200)
#define STORAGE_ERR_PROTOCOL (-201)
#define STORAGE_ERR_NO_INTERFACE (-202)

enum { TEST_UNIT_READY = 0x00, REQUEST_SENSE = 0x03, INQUIRY = 0x12, READ_CAPACITY_10 = 0x25, READ_10 = 0x28,
       WRITE_10 = 0x2A };

static ea_usb_handle_t handle;
static uint8_t interface_number, ep_in, ep_out;
static uint32_t tag, blocks, block_len, timeout_ms = 2000, last_sense;
static _Alignas(8) uint8_t data[EA_DATA_SIZE];
static uint8_t cfg[512];
static ea_usb_device_info_t infos[8];

EA_EXPORT("ea_abi_version") int32_t ea_abi_version(void) { return EA_USB_ABI_VERSION; }
EA_EXPORT("ea_usb_driver") int32_t ea_usb_driver(void) { return 1; }
EA_EXPORT("ea_data") uint8_t *ea_data(void) { return data; }
EA_EXPORT("block_count") int32_t block_count(void) { return (int32_t)blocks; }
EA_EXPORT("block_size") int32_t block_size(void) { return (int32_t)block_len; }
EA_EXPORT("sense") int32_t sense(void) { return (int32_t)last_sense; }
EA_EXPORT("set_timeout") void set_timeout(uint32_t ms) { timeout_ms = ms; }

static void put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

/* Reset recovery (BOT 5.3.4): class reset, then clear both halts. */
static void reset_recovery(void) {
    ea_usb_control_out(handle, EA_USB_TYPE_CLASS | EA_USB_RECIPIENT_INTERFACE, REQ_BOMS_RESET, 0,
                       interface_number, 0, 0, timeout_ms);
    ea_usb_clear_halt(handle, ep_in);
    ea_usb_clear_halt(handle, ep_out);
}

static int32_t command(const uint8_t *cdb, uint8_t cdb_len, uint8_t *buf, uint32_t len, int dir_in);

static void request_sense(void) {
    uint8_t cdb[6] = {REQUEST_SENSE, 0, 0, 0, 18, 0};
    uint8_t s[18];
    if (command(cdb, 6, s, sizeof s, 1) >= 14) last_sense = (uint32_t)(s[2] & 0x0F) << 16 | s[12] << 8 | s[13];
}

/* One SCSI command: CBW, data phase, CSW. Returns the bytes moved in the data phase or an error. */
static int32_t command(const uint8_t *cdb, uint8_t cdb_len, uint8_t *buf, uint32_t len, int dir_in) {
    uint8_t cbw[CBW_LEN] = {0}, csw[CSW_LEN];
    put_le32(cbw, CBW_SIGNATURE);
    put_le32(cbw + 4, ++tag);
    put_le32(cbw + 8, len);
    cbw[12] = dir_in ? 0x80 : 0x00;
    cbw[14] = cdb_len;
    memcpy(cbw + 15, cdb, cdb_len);
    int32_t r = ea_usb_bulk_out(handle, ep_out, cbw, CBW_LEN, timeout_ms);
    if (r < 0) return r;
    int32_t moved = 0;
    if (len) {
        moved = dir_in ? ea_usb_bulk_in(handle, ep_in, buf, len, timeout_ms)
                       : ea_usb_bulk_out(handle, ep_out, buf, len, timeout_ms);
        if (moved == EA_USB_ERR_PIPE) {  /* the device refused the data phase (BOT 6.7): status follows */
            r = ea_usb_clear_halt(handle, dir_in ? ep_in : ep_out);
            if (r < 0) return r;
            moved = 0;
        } else if (moved < 0) {
            return moved;
        }
    }
    r = ea_usb_bulk_in(handle, ep_in, csw, CSW_LEN, timeout_ms);
    if (r == EA_USB_ERR_PIPE) {
        ea_usb_clear_halt(handle, ep_in);
        r = ea_usb_bulk_in(handle, ep_in, csw, CSW_LEN, timeout_ms);
    }
    if (r < 0) return r;
    if (r != CSW_LEN || le32(csw) != CSW_SIGNATURE || le32(csw + 4) != tag || csw[12] == 2) {
        reset_recovery();
        return STORAGE_ERR_PROTOCOL;
    }
    if (csw[12] == 1) {
        if (cdb[0] != REQUEST_SENSE) request_sense();
        return STORAGE_ERR_CHECK_CONDITION;
    }
    return moved;
}

/* Finds a BOT/SCSI interface in configuration 0 of `dev`; fills interface_number and the endpoints. */
static int find_bot_interface(ea_usb_device_t dev) {
    int32_t len = ea_usb_configuration_descriptor(dev, 0, cfg, sizeof cfg);
    if (len < 0) return 0;
    if ((uint32_t)len > sizeof cfg) len = sizeof cfg;
    int32_t at = ea_usb_next_desc(cfg, (uint32_t)len, 0, EA_USB_DT_INTERFACE);
    while (at >= 0) {
        const uint8_t *d = cfg + at;
        if (d[5] == 0x08 && d[6] == 0x06 && d[7] == 0x50) {
            interface_number = d[2];
            ep_in = ep_out = 0;
            int32_t e = at + d[0];
            for (int n = 0; n < d[4]; n++) {
                e = ea_usb_next_desc(cfg, (uint32_t)len, (uint32_t)e, EA_USB_DT_ENDPOINT);
                if (e < 0) break;
                if ((cfg[e + 3] & 0x03) == EA_USB_TRANSFER_BULK) {
                    if (cfg[e + 2] & EA_USB_ENDPOINT_IN) ep_in = cfg[e + 2];
                    else ep_out = cfg[e + 2];
                }
                e += cfg[e];
            }
            if (ep_in && ep_out) return 1;
        }
        at = ea_usb_next_desc(cfg, (uint32_t)len, (uint32_t)(at + d[0]), EA_USB_DT_INTERFACE);
    }
    return 0;
}

EA_EXPORT("init") int32_t init(void) {
    int32_t n = ea_usb_enumerate(infos, sizeof infos / sizeof infos[0]);
    if (n < 0) return n;
    if (n > (int32_t)(sizeof infos / sizeof infos[0])) n = sizeof infos / sizeof infos[0];
    ea_usb_device_t dev = 0;
    for (int32_t i = 0; i < n && !dev; i++)
        if (find_bot_interface(infos[i].device)) dev = infos[i].device;
    if (!dev) return n == 0 ? EA_USB_ERR_NOT_FOUND : STORAGE_ERR_NO_INTERFACE;
    if (handle > 0) ea_usb_close(handle);
    handle = ea_usb_open(dev);
    if (handle < 0) {
        int32_t err = handle;
        handle = 0;
        return err;
    }
    int32_t r = ea_usb_kernel_driver_active(handle, interface_number);
    if (r == 1) r = ea_usb_detach_kernel_driver(handle, interface_number);
    if (r < 0) return r;
    r = ea_usb_active_configuration(handle);
    if (r == 0) r = ea_usb_select_configuration(handle, 1);
    if (r < 0) return r;
    r = ea_usb_claim_interface(handle, interface_number);
    if (r < 0) return r;
    uint8_t tur[6] = {TEST_UNIT_READY, 0, 0, 0, 0, 0};
    for (int tries = 0; (r = command(tur, 6, 0, 0, 0)) == STORAGE_ERR_CHECK_CONDITION && tries < 3; tries++) {
    }
    if (r < 0) return r;
    uint8_t cap_cdb[10] = {READ_CAPACITY_10};
    uint8_t cap[8];
    r = command(cap_cdb, 10, cap, sizeof cap, 1);
    if (r < 0) return r;
    if (r < 8) return STORAGE_ERR_PROTOCOL;
    blocks = be32(cap) + 1;
    block_len = be32(cap + 4);
    return EA_USB_OK;
}

static int32_t rw(uint8_t op, uint32_t lba, uint32_t count) {
    if (handle <= 0) return EA_USB_ERR_NO_DEVICE;
    if (count == 0 || count > 0xFFFF || (uint64_t)count * block_len > EA_DATA_SIZE)
        return EA_USB_ERR_INVALID_PARAM;
    uint8_t cdb[10] = {op, 0, (uint8_t)(lba >> 24), (uint8_t)(lba >> 16), (uint8_t)(lba >> 8), (uint8_t)lba, 0,
                       (uint8_t)(count >> 8), (uint8_t)count, 0};
    return command(cdb, 10, data, count * block_len, op == READ_10);
}

EA_EXPORT("read_blocks") int32_t read_blocks(uint32_t lba, uint32_t count) { return rw(READ_10, lba, count); }
EA_EXPORT("write_blocks") int32_t write_blocks(uint32_t lba, uint32_t count) { return rw(WRITE_10, lba, count); }

EA_EXPORT("inquiry") int32_t inquiry(void) {
    if (handle <= 0) return EA_USB_ERR_NO_DEVICE;
    uint8_t cdb[6] = {INQUIRY, 0, 0, 0, 36, 0};
    return command(cdb, 6, data, 36, 1);
}
