"""The audit trail: Events, metrics, decision logs and the background scan's PolicyReports."""
