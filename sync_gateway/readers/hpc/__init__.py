"""The hpc run format (docs/run-format.md): its reader, its parsing and its discovery."""
