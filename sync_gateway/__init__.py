"""sync_gateway: the login-node half of hpc-sync. It reads runs only through docs/run-format.md."""
