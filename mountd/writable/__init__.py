"""The writable store: its resource factory, writable archives and folders, policy, uploads, locks, props."""
