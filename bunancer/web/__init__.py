"""The embedded web layer: a trie router and a small HTTP/1.1 server for the API and dashboard."""
