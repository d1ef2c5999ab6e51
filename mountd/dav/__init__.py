"""The read path: provider, resource factory, read-only resources, archive facts, listing cache, CRCs."""
