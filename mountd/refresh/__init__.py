"""Refreshes: freshness hooks (reads of expired archives), the refresh scheduler, the "swapped" listener."""
