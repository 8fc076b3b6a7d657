"""Attestation with stock Keylime, agent side: wire formats, registrar client, the agent's API."""
