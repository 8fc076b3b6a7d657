/* BME280 combined humidity, pressure and temperature sensor (Bosch BST-BME280-DS002).
 * Forced-mode measurements, x1 oversampling; compensation is the datasheet's integer code (section 4.2.3):
 * temperature in 0.01 degC, pressure in Q24.8 Pa (64-bit), humidity in Q22.10 %RH. */
#include "edgeagent_i2c.h"

EA_DRIVER_BUFFER()

#define BME280_CHIP_ID 0xD0
#define BME280_CHIP_ID_VALUE 0x60
#define BME280_RESET 0xE0
#define BME280_RESET_VALUE 0xB6
#define BME280_CALIB_00 0x88 /* 0x88..0xA1: 26 bytes */
#define BME280_CALIB_26 0xE1 /* 0xE1..0xE7: 7 bytes */
#define BME280_CTRL_HUM 0xF2
#define BME280_STATUS 0xF3
#define BME280_CTRL_MEAS 0xF4
#define BME280_PRESS_MSB 0xF7 /* 0xF7..0xFE: press[3] temp[3] hum[2] */

#define STATUS_MEASURING 0x08
#define STATUS_IM_UPDATE 0x01
#define OSRS_X1 1
#define MODE_FORCED 1

static ea_i2c_t bus;
static ea_delay_t delay;
static uint32_t addr;

static uint16_t dig_T1, dig_P1;
static int16_t dig_T2, dig_T3, dig_P2, dig_P3, dig_P4, dig_P5, dig_P6, dig_P7, dig_P8, dig_P9;
static uint8_t dig_H1, dig_H3;
static int16_t dig_H2, dig_H4, dig_H5;
static int8_t dig_H6;

static uint16_t u16_le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static int32_t t_fine;

static int32_t compensate_t(int32_t adc_T) { /* 0.01 degC */
    int32_t var1 = ((((adc_T >> 3) - ((int32_t)dig_T1 << 1))) * ((int32_t)dig_T2)) >> 11;
    int32_t var2 = (((((adc_T >> 4) - ((int32_t)dig_T1)) * ((adc_T >> 4) - ((int32_t)dig_T1))) >> 12) *
                    ((int32_t)dig_T3)) >> 14;
    t_fine = var1 + var2;
    return (t_fine * 5 + 128) >> 8;
}

static uint32_t compensate_p(int32_t adc_P) { /* Q24.8 Pa */
    int64_t var1 = ((int64_t)t_fine) - 128000;
    int64_t var2 = var1 * var1 * (int64_t)dig_P6;
    var2 = var2 + ((var1 * (int64_t)dig_P5) << 17);
    var2 = var2 + (((int64_t)dig_P4) << 35);
    var1 = ((var1 * var1 * (int64_t)dig_P3) >> 8) + ((var1 * (int64_t)dig_P2) << 12);
    var1 = (((((int64_t)1) << 47) + var1)) * ((int64_t)dig_P1) >> 33;
    if (var1 == 0) return 0; /* avoid a division by zero */
    int64_t p = 1048576 - adc_P;
    p = (((p << 31) - var2) * 3125) / var1;
    var1 = (((int64_t)dig_P9) * (p >> 13) * (p >> 13)) >> 25;
    var2 = (((int64_t)dig_P8) * p) >> 19;
    p = ((p + var1 + var2) >> 8) + (((int64_t)dig_P7) << 4);
    return (uint32_t)p;
}

static uint32_t compensate_h(int32_t adc_H) { /* Q22.10 %RH */
    int32_t v = (t_fine - ((int32_t)76800));
    v = (((((adc_H << 14) - (((int32_t)dig_H4) << 20) - (((int32_t)dig_H5) * v)) + ((int32_t)16384)) >> 15) *
         (((((((v * ((int32_t)dig_H6)) >> 10) * (((v * ((int32_t)dig_H3)) >> 11) + ((int32_t)32768))) >> 10) +
            ((int32_t)2097152)) * ((int32_t)dig_H2) + 8192) >> 14));
    v = (v - (((((v >> 15) * (v >> 15)) >> 7) * ((int32_t)dig_H1)) >> 4));
    v = (v < 0 ? 0 : v);
    v = (v > 419430400 ? 419430400 : v);
    return (uint32_t)(v >> 12);
}

EA_EXPORT("init") int32_t init(uint32_t i2c, uint32_t delay_handle, uint32_t address) {
    bus = i2c;
    delay = delay_handle;
    addr = address;
    uint8_t id = 0;
    int32_t rc = ea_i2c_read_regs(bus, addr, BME280_CHIP_ID, &id, 1);
    if (rc != EA_OK) return rc;
    if (id != BME280_CHIP_ID_VALUE) {
        static const char msg[] = "bme280: chip id is not 0x60 (a BMP280?)";
        ea_log(EA_LOG_ERROR, msg, sizeof msg - 1);
        return EA_I2C_ERR_OTHER;
    }
    rc = ea_i2c_write_reg(bus, addr, BME280_RESET, BME280_RESET_VALUE);
    if (rc != EA_OK) return rc;
    ea_delay_ns(delay, 2000000); /* start-up time 2 ms */
    uint8_t status = STATUS_IM_UPDATE;
    for (int tries = 0; status & STATUS_IM_UPDATE; tries++) { /* NVM copy to image registers */
        if (tries == 10) return EA_I2C_ERR_OTHER;
        rc = ea_i2c_read_regs(bus, addr, BME280_STATUS, &status, 1);
        if (rc != EA_OK) return rc;
        if (status & STATUS_IM_UPDATE) ea_delay_ns(delay, 1000000);
    }
    uint8_t c[26], h[7];
    rc = ea_i2c_read_regs(bus, addr, BME280_CALIB_00, c, sizeof c);
    if (rc != EA_OK) return rc;
    rc = ea_i2c_read_regs(bus, addr, BME280_CALIB_26, h, sizeof h);
    if (rc != EA_OK) return rc;
    dig_T1 = u16_le(&c[0]);
    dig_T2 = (int16_t)u16_le(&c[2]);
    dig_T3 = (int16_t)u16_le(&c[4]);
    dig_P1 = u16_le(&c[6]);
    dig_P2 = (int16_t)u16_le(&c[8]);
    dig_P3 = (int16_t)u16_le(&c[10]);
    dig_P4 = (int16_t)u16_le(&c[12]);
    dig_P5 = (int16_t)u16_le(&c[14]);
    dig_P6 = (int16_t)u16_le(&c[16]);
    dig_P7 = (int16_t)u16_le(&c[18]);
    dig_P8 = (int16_t)u16_le(&c[20]);
    dig_P9 = (int16_t)u16_le(&c[22]);
    dig_H1 = c[25];
    dig_H2 = (int16_t)u16_le(&h[0]);
    dig_H3 = h[2];
    dig_H4 = (int16_t)(((int8_t)h[3] * 16) | (h[4] & 0x0F));
    dig_H5 = (int16_t)(((int8_t)h[5] * 16) | (h[4] >> 4));
    dig_H6 = (int8_t)h[6];
    /* ctrl_hum takes effect only after a write to ctrl_meas. */
    return ea_i2c_write_reg(bus, addr, BME280_CTRL_HUM, OSRS_X1);
}

EA_EXPORT("describe") int32_t describe(void) {
    static const char d[] = "temperature:C,pressure:hPa,humidity:%RH";
    __builtin_memcpy(ea_buffer(), d, sizeof d - 1);
    return sizeof d - 1;
}

EA_EXPORT("read") int32_t read(void) {
    int32_t rc = ea_i2c_write_reg(bus, addr, BME280_CTRL_MEAS, (OSRS_X1 << 5) | (OSRS_X1 << 2) | MODE_FORCED);
    if (rc != EA_OK) return rc;
    /* x1/x1/x1: t_measure,max = 1.25 + 2.3 + 2.875 + 2.875 = 9.3 ms (datasheet 9.1); then the measuring bit
     * says whether the part is done (it normally is). */
    ea_delay_ns(delay, 9300000);
    uint8_t status = STATUS_MEASURING;
    for (int tries = 0;; tries++) {
        rc = ea_i2c_read_regs(bus, addr, BME280_STATUS, &status, 1);
        if (rc != EA_OK) return rc;
        if (!(status & STATUS_MEASURING)) break;
        if (tries == 50) return EA_I2C_ERR_OTHER;
        ea_delay_ns(delay, 1000000);
    }
    uint8_t d[8];
    rc = ea_i2c_read_regs(bus, addr, BME280_PRESS_MSB, d, sizeof d);
    if (rc != EA_OK) return rc;
    int32_t adc_P = (int32_t)(((uint32_t)d[0] << 12) | ((uint32_t)d[1] << 4) | (d[2] >> 4));
    int32_t adc_T = (int32_t)(((uint32_t)d[3] << 12) | ((uint32_t)d[4] << 4) | (d[5] >> 4));
    int32_t adc_H = (int32_t)(((uint32_t)d[6] << 8) | d[7]);
    double *v = (double *)ea_buffer();
    v[0] = compensate_t(adc_T) / 100.0;
    v[1] = compensate_p(adc_P) / 256.0 / 100.0;
    v[2] = compensate_h(adc_H) / 1024.0;
    return 3;
}
