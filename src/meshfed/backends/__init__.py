"""Backends carry out the suite's Kubernetes-level operations: embedded, kind, existing."""
