"""Simulated devices: register- and protocol-level models shared by in-process backends and umockdev."""
