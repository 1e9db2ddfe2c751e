"""meshfed: a conformance suite for Istio multi-cluster mesh federation."""

__version__ = "0.1.0"
