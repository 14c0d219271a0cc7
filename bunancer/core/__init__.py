"""The data plane (proxy, upstream pools, framing, routing, selection) and, later, the
control plane (states, health, registry, store, events, stats)."""
