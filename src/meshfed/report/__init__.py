"""What a run reports: the record of a run, the versioned conformance report, the HTML extras."""
