"""Slipway's own tools: the sandbox VMs (tools.sandbox) and the local ACME CA (tools.pebble)."""
