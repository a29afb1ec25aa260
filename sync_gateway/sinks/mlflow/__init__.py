"""The MLflow sink: its REST client, its naming rules and its diagnosis (docs/gateway.md)."""
