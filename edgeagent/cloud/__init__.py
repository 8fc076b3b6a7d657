"""The cluster side: Kubernetes credentials and the attestation controller."""
