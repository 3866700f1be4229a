"""Parity as an MLflow tracking server: the subset of MLflow's REST API that its Python client
uses to log a training run (docs/mlflow.md). `protocol` checks the wire format; `views` maps it
onto core's runs and point writer."""
