"""The control plane: what decides. Server states and the checks that move them (active
health checks, passive outlier ejection), the registry of pools and servers and the one
write path that changes it (commands), events, statistics read from the data plane's
counters, and persistence (file or Redis). It imports the data plane; never the reverse.
"""
