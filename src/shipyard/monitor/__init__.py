"""The `monitor` stage. Today: the reference profile that bundles carry, which live traffic is
compared with."""
