"""Air-gapped sites (docs/airgap.md): ``export`` writes what is new into self-checking bundle files; ``import``
applies them to a mirror of the roots, which the same readers, engine and sink then sync."""
