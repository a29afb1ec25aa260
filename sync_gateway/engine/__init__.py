"""The pass engine: discovers runs, syncs each changed one through its reader and the sink, and moves a
cursor only after the sink acknowledged the batch that covers it. State, leases and the composition root
(:class:`~sync_gateway.engine.runner.Runner`, used by every command) live here too."""
