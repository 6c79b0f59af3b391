"""The sign-off: gates, the evidence they judge, verdicts, the report and its plots."""
