"""Hardware backends behind small protocols: I2C buses (smbus2, simulated) and USB devices."""
