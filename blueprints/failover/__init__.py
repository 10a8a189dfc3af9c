"""Cold-spare failover for the single-vm blueprint: watch, promote, park."""
