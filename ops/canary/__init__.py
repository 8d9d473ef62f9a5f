"""Canary weight changes: statistical gates and the step controller (routing is in
`ops.canary.routing`)."""
