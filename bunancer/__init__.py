"""bunancer: an HTTP/1.1 load balancer in Python, fast enough to use, built to show how
load balancing works."""

__version__ = "0.1.0"
