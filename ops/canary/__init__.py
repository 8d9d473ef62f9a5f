"""Canary weight changes: statistical gates and the step controller (routing is in
`producers.routing`)."""
