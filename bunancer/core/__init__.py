"""The data plane: everything a proxied request or tunnel passes through, and nothing else.

Listeners, client and upstream connections, the request plan, exchanges, connection
pools, server pools and their selectors, framing, headers, routing, tunnels, TCP mode,
counters and the access log. It reads plain settings and an immutable set of routable
servers per pool; it imports nothing of bunancer outside `core/` but `eventloop`, and is
the unit `bunancer compile` (mypyc) builds; `NATIVE` says which way it loaded.
"""

from .. import native

NATIVE = native.activate(__path__)
