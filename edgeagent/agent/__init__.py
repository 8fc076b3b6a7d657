"""``edgeagent agent``: the long-running service (measure, enroll, attest, renew, drivers, controllers)."""
