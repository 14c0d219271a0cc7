"""The data plane (proxy, upstream pools, framing, routing, selection) and the control
plane (states, health, registry, store, events, stats).

The per-request modules load compiled when `bunancer compile` built them from this very
source (see bunancer.native); `NATIVE` says which way they loaded.
"""

from .. import native

NATIVE = native.activate(__path__)
