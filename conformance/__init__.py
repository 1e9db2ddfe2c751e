"""The conformance cases users run, one module per area."""
