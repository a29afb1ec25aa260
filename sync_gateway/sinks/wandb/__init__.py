"""The W&B sink (server.kind wandb): sink.py, the wire in _api.py, names and shapes in _names.py."""
