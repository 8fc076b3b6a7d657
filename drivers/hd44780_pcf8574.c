/* HD44780 character LCD (Hitachi ADE-207-272) behind a PCF8574 I2C backpack, 4-bit mode.
 * Backpack wiring (the common one): P0 RS, P1 RW, P2 E, P3 backlight, P4..P7 D4..D7.
 * Output device: write(len) shows ea_buffer()[0..len) from the top-left; '\n' starts the next row. */
#include "edgeagent_i2c.h"

EA_DRIVER_BUFFER()

#define PIN_RS 0x01
#define PIN_E 0x04
#define PIN_BACKLIGHT 0x08

#define CMD_CLEAR 0x01
#define CMD_ENTRY_MODE 0x04
#define ENTRY_INCREMENT 0x02
#define CMD_DISPLAY 0x08
#define DISPLAY_ON 0x04
#define CMD_FUNCTION_SET 0x20
#define FUNCTION_2_LINES 0x08
#define CMD_SET_DDRAM 0x80

#define COLUMNS 16
#define ROWS 2
static const uint8_t row_offset[4] = {0x00, 0x40, 0x14, 0x54};

static ea_i2c_t bus;
static ea_delay_t delay;
static uint32_t addr;

/* Each nibble is two PCF8574 writes: with E high, then E low (the HD44780 latches on E's falling edge).
 * Bytes are batched into one I2C write: the expander updates its pins once per byte. */
static uint8_t out[4 * (COLUMNS + 1) * ROWS + 8];
static uint32_t n_out;

static void put_nibble(uint8_t nibble, uint8_t rs) {
    uint8_t v = (uint8_t)((nibble << 4) | rs | PIN_BACKLIGHT);
    out[n_out++] = v | PIN_E;
    out[n_out++] = v;
}

static void put_byte(uint8_t b, uint8_t rs) {
    put_nibble(b >> 4, rs);
    put_nibble(b & 0x0F, rs);
}

static int32_t flush(void) {
    int32_t rc = n_out ? ea_i2c_write(bus, addr, out, n_out) : EA_OK;
    n_out = 0;
    return rc;
}

static int32_t command(uint8_t cmd) {
    put_byte(cmd, 0);
    return flush();
}

EA_EXPORT("init") int32_t init(uint32_t i2c, uint32_t delay_handle, uint32_t address) {
    bus = i2c;
    delay = delay_handle;
    addr = address;
    ea_delay_ms(delay, 50); /* power-on: more than 40 ms after Vcc rises */
    /* Initialisation by instruction (datasheet figure 24): 8-bit function set three times, then 4-bit. */
    static const uint32_t waits_us[3] = {4500, 150, 150};
    for (int i = 0; i < 3; i++) {
        put_nibble(0x03, 0);
        int32_t rc = flush();
        if (rc != EA_OK) return rc;
        ea_delay_ns(delay, waits_us[i] * 1000);
    }
    put_nibble(0x02, 0);
    int32_t rc = flush();
    if (rc != EA_OK) return rc;
    if ((rc = command(CMD_FUNCTION_SET | FUNCTION_2_LINES)) != EA_OK) return rc;
    if ((rc = command(CMD_DISPLAY | DISPLAY_ON)) != EA_OK) return rc;
    if ((rc = command(CMD_CLEAR)) != EA_OK) return rc;
    ea_delay_ns(delay, 2000000); /* clear display: 1.52 ms */
    return command(CMD_ENTRY_MODE | ENTRY_INCREMENT);
}

EA_EXPORT("write") int32_t write(uint32_t len) {
    const uint8_t *text = ea_buffer();
    if (len > EA_BUFFER_SIZE) return EA_I2C_ERR_OTHER;
    int32_t rc = command(CMD_CLEAR);
    if (rc != EA_OK) return rc;
    ea_delay_ns(delay, 2000000);
    uint32_t row = 0, col = 0;
    for (uint32_t i = 0; i < len && row < ROWS; i++) {
        if (text[i] == '\n') {
            if ((rc = flush()) != EA_OK) return rc;
            if (++row == ROWS) break;
            col = 0;
            if ((rc = command(CMD_SET_DDRAM | row_offset[row])) != EA_OK) return rc;
            continue;
        }
        if (col == COLUMNS) continue; /* clip long rows */
        put_byte(text[i] >= 0x20 && text[i] < 0x7F ? text[i] : '?', PIN_RS);
        col++;
    }
    return flush();
}
