"""Installing signed guest bundles (drivers and controllers): verify, check, copy into place, measure."""
